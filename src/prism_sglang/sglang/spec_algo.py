"""`PrismSpecAlgo`: `--speculative-algorithm PRISM`, resolved exactly like EAGLE3, plus PRISM's own checks.

It answers every predicate of SGLang's algorithm enum as EAGLE3 does, runs the EAGLE V2 worker and SGLang's
EAGLE-family server-args handling (auto steps/topk/draft tokens, max running requests, overlap and
mixed-chunk rules), then checks the draft against the resolved settings. patches/sglang-0.5.17/0002 removes
the three places where 0.5.17 tests the algorithm's *name* against ("EAGLE", "EAGLE3").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sglang.srt.arg_groups.overrides import resolved_view
from sglang.srt.arg_groups.speculative_hook import _handle_eagle_family
from sglang.srt.server_args import ServerArgs
from sglang.srt.speculative.ragged_verify import read_ragged_verify_mode
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
from sglang.srt.speculative.spec_registry import CustomSpecAlgo

from prism_sglang.checkpoint import check_target_compatibility
from prism_sglang.config import PrismConfig
from prism_sglang.sglang import ALGORITHM, SGLANG_VERSION
from prism_sglang.sglang.model import max_draft_steps, require_step_patch

logger = logging.getLogger(__name__)

_ENUM = vars(SpeculativeAlgorithm)
EAGLE3 = SpeculativeAlgorithm.EAGLE3


def worker_class(server_args: ServerArgs) -> type:
    """The worker factory registered with the algorithm: PRISM drafts in the standard EAGLE V2 loop."""
    from sglang.srt.speculative.eagle_worker_v2 import EAGLEWorkerV2

    return EAGLEWorkerV2


class PrismSpecAlgo(CustomSpecAlgo):
    """PRISM as a plugin algorithm that behaves like EAGLE3 (see the module docstring)."""

    # The enum evaluates these on `self` (FutureMap keeps the algorithm object): use its own functions so they
    # see PRISM's EAGLE3 answers. CustomSpecAlgo lacks the first three in 0.5.17, and its
    # build_disagg_draft_input returns None where EAGLE builds an input.
    create_future_map = _ENUM["create_future_map"]
    need_topk = _ENUM["need_topk"]
    carries_draft_hidden_states = _ENUM["carries_draft_hidden_states"]
    build_disagg_draft_input = _ENUM["build_disagg_draft_input"]

    def handle_server_args(self, server_args: ServerArgs) -> None:
        # As the enum's own hook: a typo in the ragged-verify env var fails the launch here, not in a metrics path.
        read_ragged_verify_mode()
        _handle_eagle_family(server_args)
        try:
            check_server_args(server_args)
        except Exception:
            logger.exception("prism-sglang: --speculative-algorithm %s cannot start", ALGORITHM)
            raise


def _answer_like_eagle3(cls: type[CustomSpecAlgo]) -> None:
    """Make every predicate of the enum (is_*, supports_*, has_*) answer as EAGLE3's does, including those that
    CustomSpecAlgo defaults to False; a predicate added by a later sglang is covered without a second list."""
    for name in _ENUM:
        if name.startswith(("is_", "supports_", "has_")):
            setattr(cls, name, _eagle3_predicate(name))


def _eagle3_predicate(name: str) -> Callable[[Any], bool]:
    def predicate(self: Any) -> bool:
        return getattr(EAGLE3, name)()

    predicate.__name__ = predicate.__qualname__ = name
    return predicate


_answer_like_eagle3(PrismSpecAlgo)


def check_server_args(server_args: ServerArgs) -> None:
    """PRISM's checks on resolved server args; raises with a message that says what to change."""
    if getattr(server_args, "use_ray", False):
        # sglang/srt/ray/scheduler_actor.py builds the Scheduler without load_plugins(): its processes would not
        # know the algorithm or the model class.
        raise ValueError(
            f"--speculative-algorithm {ALGORITHM} does not run under --use-ray: SGLang {SGLANG_VERSION}'s Ray "
            "scheduler actors do not load plugins, so they would not know PRISM. Launch without --use-ray "
            "(the default multiprocess launcher loads the plugin in every scheduler)"
        )
    if resolved_view(server_args).enable_multi_layer_eagle:  # mid-resolution: read through the overrides
        raise ValueError(
            f"--speculative-algorithm {ALGORITHM} runs its modules in the standard EAGLE draft loop; "
            "drop --enable-multi-layer-eagle"
        )
    prism = draft_config(server_args)
    require_step_patch(prism)
    steps = max_draft_steps(server_args)
    if steps is not None:
        prism.check_num_steps(steps)
    # The embedding check needs the weights: load_weights does it.
    check_target_compatibility(prism, server_args.get_model_config().hf_config)


def draft_config(server_args: ServerArgs) -> PrismConfig:
    """The config of --speculative-draft-model-path (a local folder, or a hub repository's config.json)."""
    path = server_args.speculative_draft_model_path
    if path is None:
        raise ValueError(f"--speculative-algorithm {ALGORITHM} needs --speculative-draft-model-path (a PRISM draft)")
    if not Path(path).is_dir():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(path, "config.json", revision=server_args.speculative_draft_model_revision)).parent
    return PrismConfig.load(path)
