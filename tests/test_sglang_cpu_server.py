"""The real SGLang 0.5.17 server (`python -m sglang.launch_server`) on SGLang's CPU engine with SmolLM2 and the
shipped drafts: PRISM and EAGLE-3 are lossless against no speculation and against the reference engine, and
accept exactly what the reference engine accepts, request by request. What runs for real: the launcher, the
plugin (in the spawned scheduler), PrismSpecAlgo's argument handling, the scheduler, EAGLEWorkerV2's draft loop
with patch 0001, LlamaForCausalLMPrism, the OpenAI server. What stands in: sgl_kernel's CPU ops (plain PyTorch,
tests/sglang_cpu/site). One server per configuration, shared by the tests of this module."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file, save_file

from bench.launch import Tree
from bench.lossless import first_divergence
from bench.native import generate_greedy
from bench.prompts import BENCHES
from bench.server import ServerStartError
from prism_sglang.data.eval_sets import load_eval_set
from prism_sglang.engine.generate import Generation, TreeSettings
from prism_sglang.engine.loading import encode_chat, load_engine
from prism_sglang.engine.sampling import SamplingParams
from prism_sglang.prepare_model import prepare_smollm2
from prism_sglang.resources import BASELINE_DRAFT, DEFAULT_DRAFT, shipped_draft_dir
from tests.sglang_cpu import CHAIN, server_spec, sglang_cpu_server
from tests.sglang_support import import_sglang

import_sglang()  # skips (or fails under PRISM_REQUIRE_SGLANG=1) without a usable sglang

pytestmark = [pytest.mark.smollm2, pytest.mark.sglang, pytest.mark.slow, pytest.mark.timeout(1800)]

PROMPTS_PER_BENCH = 10
MAX_TOKENS = 64
TREE = Tree(num_steps=3, topk=2, num_draft_tokens=6)
ALGORITHMS = {"eagle3": ("EAGLE3", BASELINE_DRAFT), "prism": ("PRISM", DEFAULT_DRAFT)}


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return prepare_smollm2(log=lambda _: None)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sglang-cpu-logs")  # pytest keeps the last runs' folders: logs survive failures


@pytest.fixture(scope="module")
def prompts(smollm2) -> list[tuple[str, list[int]]]:
    """(bench/id, chat-templated token ids) of the first 10 items of MT-bench (first turns), HumanEval, GSM8K."""
    tokenizer = load_engine(smollm2).tokenizer
    return [(f"{bench}/{item.id}", encode_chat(tokenizer, [{"role": "user", "content": item.turns[0]}]))
            for bench in BENCHES for item in load_eval_set(bench, limit=PROMPTS_PER_BENCH)]


def serve_and_generate(name: str, smollm2: Path, logs: Path, prompts: list[tuple[str, list[int]]],
                       algorithm: str | None = None, draft: Path | None = None,
                       tree: Tree = CHAIN) -> list[dict[str, Any]]:
    with sglang_cpu_server(name, smollm2, logs, algorithm, draft, tree) as server:
        return generate_greedy(server.spec.url, [ids for _, ids in prompts], MAX_TOKENS, concurrency=8)


@pytest.fixture(scope="module")
def background() -> Iterator[ThreadPoolExecutor]:
    """One worker thread for the reference engine: with one torch thread it runs on the core that a CPU SGLang
    server (one torch thread too) leaves free, so the two halves of each comparison overlap in time."""
    with ThreadPoolExecutor(1) as pool:
        yield pool


def reference_generations(smollm2: Path, draft: Path, prompts: list[tuple[str, list[int]]],
                          tree: Tree = CHAIN) -> list[Generation]:
    """The reference engine's speculative greedy generations, same tree as the server."""
    engine = load_engine(smollm2, draft, TreeSettings(tree.num_steps, tree.topk, tree.num_draft_tokens))
    return [engine.generate(ids, SamplingParams(max_new_tokens=MAX_TOKENS)) for _, ids in prompts]


def few(prompts: list[tuple[str, list[int]]]) -> list[tuple[str, list[int]]]:
    """The first 3 prompts of each bench."""
    return [p for i, p in enumerate(prompts) if i % PROMPTS_PER_BENCH < 3]


@pytest.fixture(scope="module")
def reference_jobs(smollm2, prompts, background) -> dict[str, Future]:
    """Started first, finished while the servers run: the reference engine with each shipped draft, same chain;
    PRISM on every prompt (its outputs are also check 1's reference output), EAGLE-3 on the first 3 of each
    bench (CI time)."""
    return {"prism": background.submit(reference_generations, smollm2, shipped_draft_dir(DEFAULT_DRAFT), prompts),
            "eagle3": background.submit(reference_generations, smollm2, shipped_draft_dir(BASELINE_DRAFT),
                                        few(prompts))}


@pytest.fixture(scope="module")
def reference(reference_jobs, sglang_outputs) -> dict[str, list[Generation]]:
    return {name: job.result() for name, job in reference_jobs.items()}


@pytest.fixture(scope="module")
def prism_server(smollm2, logs, reference_jobs):
    """The PRISM server with the shipped draft, kept for the whole module (the API tests use it too)."""
    with sglang_cpu_server("prism", smollm2, logs, "PRISM", shipped_draft_dir(DEFAULT_DRAFT)) as server:
        yield server


@pytest.fixture(scope="module")
def sglang_outputs(smollm2, logs, prompts, prism_server) -> dict[str, list[dict[str, Any]]]:
    """Greedy /generate responses of the PRISM, no-speculation and EAGLE-3 servers on every prompt."""
    outputs = {"prism": generate_greedy(prism_server.spec.url, [ids for _, ids in prompts], MAX_TOKENS, concurrency=8)}
    outputs["none"] = serve_and_generate("none", smollm2, logs, prompts)
    outputs["eagle3"] = serve_and_generate("eagle3", smollm2, logs, prompts, "EAGLE3",
                                           shipped_draft_dir(BASELINE_DRAFT))
    return outputs


def test_greedy_outputs_agree_token_for_token(sglang_outputs, reference, prompts):
    assert len(prompts) >= 30
    expected = [r["output_ids"] for r in sglang_outputs["none"]]
    candidates = {name: [r["output_ids"] for r in responses] for name, responses in sglang_outputs.items()}
    candidates["reference engine (PRISM)"] = [g.output_ids for g in reference["prism"]]
    differences = [f"{name} on {prompt}: first difference at token {first_divergence(want, got)}"
                   for name, outputs in candidates.items()
                   for (prompt, _), want, got in zip(prompts, expected, outputs, strict=True) if want != got]
    assert not differences, differences
    assert sum(len(o) for o in expected) > len(prompts) * MAX_TOKENS // 2  # real answers, not early stops


def acceptance_mismatches(prompts: list[tuple[str, list[int]]], responses: list[dict[str, Any]],
                          generations: list[Generation]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Per prompt, the reference engine's cycles and acceptance histogram against SGLang's meta_info, where they
    differ. Same draft, same tree, same greedy target: every cycle must accept the same drafts."""
    mismatches = []
    for (prompt, _), response, generation in zip(prompts, responses, generations, strict=True):
        meta, stats = response["meta_info"], generation.stats
        ours = {"spec_verify_ct": stats.cycles, "histogram": histogram(stats.accept_lengths)}
        theirs = {"spec_verify_ct": meta["spec_verify_ct"], "histogram": trimmed(meta["spec_correct_drafts_histogram"])}
        if ours != theirs:
            mismatches.append((prompt, ours, theirs))
        assert meta["spec_accept_length"] == pytest.approx(meta["completion_tokens"] / meta["spec_verify_ct"])
    return mismatches


@pytest.mark.parametrize("name", ALGORITHMS)
def test_acceptance_equals_the_reference_engines_request_by_request(name, sglang_outputs, reference, prompts):
    subset = prompts if name == "prism" else few(prompts)
    responses = dict(zip((p for p, _ in prompts), sglang_outputs[name], strict=True))
    mismatches = acceptance_mismatches(subset, [responses[p] for p, _ in subset], reference[name])
    assert not mismatches, mismatches
    assert sum(sum(g.stats.accept_lengths) for g in reference[name]) > 0  # the equality covers accepted drafts


def test_a_draft_tree_is_lossless_and_accepts_what_the_reference_engine_accepts(smollm2, logs, prompts,
                                                                                 sglang_outputs, background):
    """topk > 1: SGLang's tree build, tree-masked verification and greedy tree walk (our test kernels) against
    the reference engine's EAGLE-2 tree, on the first 3 prompts of each bench."""
    subset, draft = few(prompts), shipped_draft_dir(DEFAULT_DRAFT)
    job = background.submit(reference_generations, smollm2, draft, subset, TREE)
    responses = serve_and_generate("prism-tree", smollm2, logs, subset, "PRISM", draft, TREE)
    generations = job.result()
    none = dict(zip((p for p, _ in prompts), sglang_outputs["none"], strict=True))
    for (prompt, _), response, generation in zip(subset, responses, generations, strict=True):
        assert response["output_ids"] == none[prompt]["output_ids"] == generation.output_ids, prompt
    assert not acceptance_mismatches(subset, responses, generations)
    assert max(max(g.stats.accept_lengths) for g in generations) >= 2


def histogram(accept_lengths: list[int]) -> list[int]:
    counts = Counter(accept_lengths)
    return [counts.get(i, 0) for i in range(max(accept_lengths) + 1)] if accept_lengths else []


def trimmed(values: list[int]) -> list[int]:
    values = list(values)
    while values and values[-1] == 0:
        values.pop()
    return values


def write_draft_with_noise_in_module(source: Path, module: int, out: Path) -> Path:
    """A copy of the PRISM draft whose module `module` is replaced by random weights of the same shapes."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "config.json", out / "config.json")
    tensors = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for key, tensor in tensors.items():
        if key.startswith(f"layers.{module}.") and tensor.ndim == 2:
            noise = torch.randn(tensor.shape, generator=generator) * tensor.float().std()
            tensors[key] = noise.to(tensor.dtype)
    save_file(tensors, out / "model.safetensors")
    return out


def later_acceptances(histogram: list[int]) -> int:
    """Drafts accepted beyond the first of their cycle (drafts of steps >= 1), from a correct-drafts histogram."""
    return sum((accepted - 1) * cycles for accepted, cycles in enumerate(histogram) if accepted > 1)


def test_draft_steps_run_their_own_module_inside_sglang(smollm2, logs, prompts, sglang_outputs, background,
                                                        tmp_path):
    """Module 1 (steps >= 1) replaced by noise, module 0 kept: still lossless, and SGLang accepts exactly what the
    reference engine accepts with that draft. Module 0 is the shipped draft's, so an SGLang that ran module 0 at
    every step would accept exactly what it accepts with the shipped draft: it does not, and the drafts of the
    later steps are accepted less often."""
    noisy = write_draft_with_noise_in_module(shipped_draft_dir(DEFAULT_DRAFT), 1, tmp_path / "noisy-prism")
    subset = few(prompts)
    job = background.submit(reference_generations, smollm2, noisy, subset)
    responses = serve_and_generate("prism-noisy-module-1", smollm2, logs, subset, "PRISM", noisy)
    generations = job.result()
    none = {prompt: r["output_ids"] for (prompt, _), r in zip(prompts, sglang_outputs["none"], strict=True)}
    for (prompt, _), response, generation in zip(subset, responses, generations, strict=True):
        assert response["output_ids"] == none[prompt] == generation.output_ids, prompt
    assert not acceptance_mismatches(subset, responses, generations)
    shipped = dict(zip((p for p, _ in prompts), sglang_outputs["prism"], strict=True))
    noisy_histograms = [trimmed(r["meta_info"]["spec_correct_drafts_histogram"]) for r in responses]
    shipped_histograms = [trimmed(shipped[p]["meta_info"]["spec_correct_drafts_histogram"]) for p, _ in subset]
    assert noisy_histograms != shipped_histograms
    later = [sum(later_acceptances(h) for h in hs) for hs in (noisy_histograms, shipped_histograms)]
    assert later[0] < later[1], later


def test_plugin_loads_in_the_scheduler_and_chat_completions_answer(prism_server):
    log = prism_server.spec.log.read_text(errors="replace")
    assert "type=LlamaForCausalLMPrism" in log  # the scheduler process built our model class: the plugin ran there
    client = OpenAI(base_url=prism_server.spec.url + "/v1", api_key="none")
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
    text = reply.choices[0].message.content
    assert "Paris" in text and reply.usage.completion_tokens > 0
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0,
                                            stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == text
    info = prism_server.server_info()
    assert info["speculative_algorithm"] == "PRISM"


def broken_draft(tmp_path: Path, **config_changes: Any) -> Path:
    draft = tmp_path / "broken-draft"
    shutil.copytree(shipped_draft_dir(DEFAULT_DRAFT), draft)
    config = json.loads((draft / "config.json").read_text())
    (draft / "config.json").write_text(json.dumps({**config, **config_changes}))
    return draft


@pytest.mark.parametrize(("changes", "message"), [
    ({"target_hidden_size": 640}, "draft field 'target_hidden_size' is 640, but the target's hidden_size is 576"),
    ({"prism_step_modules": [0, 2]}, "prism_step_modules"),
], ids=["wrong-target-hidden-size", "table-names-a-missing-module"])
def test_a_bad_draft_stops_the_server_at_start_with_our_message(smollm2, tmp_path, changes, message):
    spec = server_spec("bad-draft", smollm2, tmp_path, "PRISM", broken_draft(tmp_path, **changes))
    from bench.server import ServerProcess

    with pytest.raises(ServerStartError, match="exited with status"), ServerProcess(spec):
        pass
    assert message in spec.log.read_text(errors="replace")
