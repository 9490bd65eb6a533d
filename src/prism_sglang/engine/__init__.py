"""Reference speculative decoding engine (DESIGN §2.2): the correctness oracle, the offline acceptance
evaluator and the CPU serving backend."""

from prism_sglang.engine.generate import Generation, SpeculativeEngine, TreeSettings
from prism_sglang.engine.sampling import SamplingParams
from prism_sglang.engine.stats import SpecStats

__all__ = ["Generation", "SamplingParams", "SpecStats", "SpeculativeEngine", "TreeSettings"]
