"""The drafts this package ships for SmolLM2-135M-Instruct (recipes/smollm2-drafts.sh): they exist, are small,
load against the real target, and speculative greedy decoding with them is lossless with real acceptances."""

import pytest

from prism_sglang.checkpoint import load_draft
from prism_sglang.config import PrismConfig
from prism_sglang.engine.generate import SpeculativeEngine, TreeSettings
from prism_sglang.engine.loading import encode_chat, load_engine
from prism_sglang.engine.sampling import SamplingParams
from prism_sglang.prepare_model import prepare_smollm2
from prism_sglang.resources import BASELINE_DRAFT, DEFAULT_DRAFT, shipped_draft_dir

pytestmark = pytest.mark.smollm2

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "Tom has 3 apples and buys 5 more. How many apples does he have? Explain.",
    "Give me three tips for writing clear emails.",
]


@pytest.fixture(scope="module")
def smollm2_engine():
    return load_engine(prepare_smollm2(log=lambda _: None))


@pytest.mark.parametrize(("name", "modules", "table"), [(DEFAULT_DRAFT, 2, [0, 1]), (BASELINE_DRAFT, 1, [0])])
def test_shipped_draft_is_small_and_fits_smollm2(name, modules, table, smollm2_engine):
    folder = shipped_draft_dir(name)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size <= 40 * 2**20  # the budget for the package
    config = PrismConfig.load(folder)
    assert (config.num_modules, list(config.step_modules)) == (modules, table)
    target = smollm2_engine.target
    load_draft(folder, target.config, target.embedding_weight())  # raises on any mismatch with the target


@pytest.mark.parametrize("tree", [TreeSettings(num_steps=5, topk=1), TreeSettings(num_steps=6, topk=4,
                                                                                   num_draft_tokens=16)],
                         ids=["chain-5", "tree-6-4-16"])
def test_greedy_with_the_shipped_prism_draft_equals_target_only(tree, smollm2_engine):
    target, tokenizer = smollm2_engine.target, smollm2_engine.tokenizer
    draft = load_draft(shipped_draft_dir(), target.config, target.embedding_weight())
    engine = SpeculativeEngine(target, draft, tree, tokenizer)
    params = SamplingParams(max_new_tokens=40)
    accept_lengths: list[int] = []
    for prompt in PROMPTS:
        ids = encode_chat(tokenizer, [{"role": "user", "content": prompt}])
        speculative = engine.generate(ids, params)
        assert speculative.output_ids == engine.generate(ids, params, speculative=False).output_ids, prompt
        accept_lengths += speculative.stats.accept_lengths
    # The trained draft gets drafted tokens accepted (a random one: ~0 per cycle), several in a row at times, so
    # the equality above covered multi-token acceptances. The CPU-scale shipped draft accepts ~0.3 per cycle.
    assert sum(accept_lengths) / len(accept_lengths) > 0.15, accept_lengths
    assert max(accept_lengths) >= 2, accept_lengths
