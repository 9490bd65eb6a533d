from typing import Any, NoReturn

from torchvision._placeholder import module_getattr, unavailable

__getattr__ = module_getattr(__name__)


def decode_jpeg(*args: Any, **kwargs: Any) -> NoReturn:
    unavailable("io.decode_jpeg")
