"""Test package. Runs before anything imports transformers, which is why the torchvision stub is set up here.

transformers decides once, at its first import (tests/conftest.py), which torchvision-backed classes exist, and
`import sglang` needs them (sglang/srt/configs registers image processors at import). On the CPU install, sglang
is there but torchvision is not (PyPI's builds need CUDA torch), so the import-only stub (tests/stubs) must be on
sys.path before that first import: adding it later, in the sglang tests, would be too late.
"""

from tests.sglang_support import add_torchvision_stub

add_torchvision_stub()
