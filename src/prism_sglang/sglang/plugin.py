"""SGLang plugin (entry point `sglang.srt.plugins: prism`): registers `--speculative-algorithm PRISM` and the
`LlamaForCausalLMPrism` draft architecture in every SGLang process that loads plugins (launcher, engine,
schedulers).

SGLang logs and swallows exceptions raised by plugins, so `register` logs before raising; the checks that must
stop a bad launch run at server-args handling (`spec_algo.PrismSpecAlgo.handle_server_args`), where an
exception does stop it. The version guard runs before anything else of sglang is imported.
"""

from __future__ import annotations

import logging

from prism_sglang.sglang import ALGORITHM, SGLANG_VERSION

logger = logging.getLogger(__name__)


def register() -> None:
    """Register the model architecture and the speculative algorithm (idempotent)."""
    try:
        check_version()
        _register_model()
        _register_algorithm()
    except Exception:
        logger.exception("prism-sglang: registering the PRISM plugin failed; --speculative-algorithm PRISM is off")
        raise


def check_version() -> None:
    import sglang

    if sglang.__version__ != SGLANG_VERSION:
        raise RuntimeError(
            f"prism-sglang needs sglang=={SGLANG_VERSION} (its model and patches are written against it), "
            f"found sglang {sglang.__version__}"
        )


def _register_model() -> None:
    from sglang.srt.models.registry import ModelRegistry

    from prism_sglang.config import PRISM_ARCHITECTURE
    from prism_sglang.sglang.model import LlamaForCausalLMPrism

    ModelRegistry.models[PRISM_ARCHITECTURE] = LlamaForCausalLMPrism


def _register_algorithm() -> None:
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from prism_sglang.sglang.spec_algo import PrismSpecAlgo, worker_class

    try:
        existing = SpeculativeAlgorithm.from_string(ALGORITHM)
    except ValueError:  # not registered yet
        SpeculativeAlgorithm.register(ALGORITHM, supports_overlap=True, spec_class=PrismSpecAlgo)(worker_class)
        return
    if not isinstance(existing, PrismSpecAlgo):
        raise RuntimeError(f"speculative algorithm {ALGORITHM} is already registered by another plugin: {existing!r}")
