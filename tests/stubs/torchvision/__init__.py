"""Import-only torchvision stub for the sglang CPU tests (see tests/stubs/README.md)."""

from torchvision import io, transforms
from torchvision._placeholder import module_getattr

__version__ = "0.0.0+stub"
__all__ = ["io", "transforms"]
__getattr__ = module_getattr(__name__)
