"""Evaluation sets, training prompt sources and the contamination check that keeps the first out of the second."""

from prism_sglang.data.decontaminate import Decontaminator, default_decontaminator
from prism_sglang.data.eval_sets import EVAL_BENCHES, EvalItem, load_eval_set
from prism_sglang.data.prompt_sources import (
    PROMPT_SOURCES,
    ConversationError,
    TrainingPrompt,
    drop_contaminated,
    iter_conversations,
    load_prompt_mix,
    load_prompts,
    read_conversations,
)

__all__ = [
    "EVAL_BENCHES",
    "PROMPT_SOURCES",
    "ConversationError",
    "Decontaminator",
    "EvalItem",
    "TrainingPrompt",
    "default_decontaminator",
    "drop_contaminated",
    "iter_conversations",
    "load_eval_set",
    "load_prompt_mix",
    "load_prompts",
    "read_conversations",
]
