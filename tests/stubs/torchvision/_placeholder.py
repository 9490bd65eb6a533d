"""Placeholders for the names sglang imports from torchvision; calling one raises."""

from __future__ import annotations

from typing import Any, NoReturn


class Placeholder:
    """Stands in for any torchvision class or function: importable, unusable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        unavailable(type(self).__name__)

    def __class_getitem__(cls, item: Any) -> type:
        return cls


def unavailable(name: str) -> NoReturn:
    raise RuntimeError(f"torchvision.{name} is not available: this is the import-only test stub (tests/stubs)")


def module_getattr(module: str) -> Any:
    """A module-level `__getattr__` returning a placeholder class named after the missing attribute."""

    def __getattr__(name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (Placeholder,), {"__module__": module})

    return __getattr__
