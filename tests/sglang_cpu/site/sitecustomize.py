"""Test-only start-up shims for every Python process of a real SGLang 0.5.17 CPU server (tests/sglang_cpu).

Python imports `sitecustomize` at start-up from sys.path, so putting this folder on PYTHONPATH reaches the
launcher and the scheduler and detokenizer processes it spawns. What this machine lacks, and what stands in:
* triton: no CPU wheel; SGLang's own `sglang._triton_stub` (kernel definitions import, never run).
* torchvision: PyPI's wheels need CUDA torch; the import-only stub in tests/stubs.
* AMX: the CPU has AVX-512 but no AMX, so SGLang would switch `intel_amx` attention to `torch_native`, which
  its EAGLE draft path refuses. Only that one decision (server-args resolution) is told "AMX present"; model
  layers keep their AMX-free code paths.
* SGLang's own CPU attention backend passes the committed sequence lengths where it computed the right ones
  (an upstream bug in 0.5.17, see `_seq_lens_as_computed`); the calls get the ones it computed.
* sgl_kernel: the plain-PyTorch stand-ins of its CPU ops (tests/sglang_cpu/kernels.py, package `sgl_kernel`
  beside this file), registered at start-up so that `torch.ops.sgl_kernel.*` resolves wherever it is read.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_STUBS = Path(__file__).resolve().parents[2] / "stubs"
if str(_STUBS) not in sys.path:
    sys.path.append(str(_STUBS))

def _amx_for_attention_choice(overrides: ModuleType) -> None:
    overrides.cpu_has_amx_support = lambda: True


def _seq_lens_as_computed(backend_module: ModuleType) -> None:
    """SGLang 0.5.17's `IntelAMXAttnBackend` computes the right sequence lengths for a target verification
    (committed + draft tokens) and for each draft-decode step (per candidate: committed + steps so far), then
    overwrites them with `forward_batch.seq_lens` (the committed length: intel_amx_backend.py:216 and :262) before
    calling the kernel. Verification then attends to a prefix short by the draft tokens, and draft steps do not
    see the drafts before them: the output is wrong (not merely slower), with the real kernels as with ours.
    Until SGLang fixes it, the two calls see the lengths the backend itself computed."""
    backend = backend_module.IntelAMXAttnBackend
    forward_extend, forward_decode = backend.forward_extend, backend.forward_decode

    def with_seq_lens(forward_batch, seq_lens, call):
        committed = forward_batch.seq_lens
        forward_batch.seq_lens = seq_lens
        try:
            return call()
        finally:
            forward_batch.seq_lens = committed

    def extend(self, q, k, v, layer, forward_batch, *args, **kwargs):
        call = lambda: forward_extend(self, q, k, v, layer, forward_batch, *args, **kwargs)  # noqa: E731
        if not forward_batch.forward_mode.is_target_verify():
            return call()
        return with_seq_lens(forward_batch, self.extend_metadata[0], call)

    def decode(self, q, k, v, layer, forward_batch, *args, **kwargs):
        call = lambda: forward_decode(self, q, k, v, layer, forward_batch, *args, **kwargs)  # noqa: E731
        if self.draft_decode_metadata is None:
            return call()
        return with_seq_lens(forward_batch, self.draft_decode_metadata[1], call)

    backend.forward_extend, backend.forward_decode = extend, decode


_AFTER_IMPORT = {
    "sglang.srt.arg_groups.overrides": _amx_for_attention_choice,
    "sglang.srt.layers.attention.intel_amx_backend": _seq_lens_as_computed,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs `_AFTER_IMPORT[name](module)` right after module `name` executes."""

    def find_spec(self, name, path, target=None):
        patch = _AFTER_IMPORT.get(name)
        if patch is None:
            return None
        sys.meta_path.remove(self)  # find the real spec without finding ourselves again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _install() -> None:
    if importlib.util.find_spec("sglang") is None:
        return
    from sglang._triton_stub import install

    install()
    sys.meta_path.insert(0, _PatchAfterImport())
    import sgl_kernel  # noqa: F401 (registers torch.ops.sgl_kernel.*)


_install()
