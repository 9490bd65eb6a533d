"""Data-parallel training with torchrun over gloo (CPU), end to end through the command line on a tiny chat
target: 2 ranks compute what 1 process computes on the same global batch, gradient accumulation too; a killed run
resumes exactly; only rank 0 writes; a resume at another world size, a bad batch split and a dead rank are
refused or stop the job with a message, bounded in time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prism_sglang.train.distributed import World
from prism_sglang.train.trainer import TrainConfig, micro_batch_size

STEPS = 6


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"Count from {i} to {i + 3 + i % 5}, please."},
                           {"role": "assistant", "content": " ".join(str(n) for n in range(i, i + 4 + i % 5))}]}
             for i in range(24)]  # lengths differ, so ranks and micro-batches see different padding
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def train(target: Path, data: Path, out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "prism_sglang.cli", "train", "--target", str(target), "--data", str(data),
               "--out", str(out), "--modules", "2", "--draft-vocab-size", "512", "--batch-size", "4",
               "--ttt-steps", "3", "--aux-layers", "0,1,2", "--device", "cpu", "--precision", "fp32",
               "--lr", "1e-2", "--max-steps", str(STEPS), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def weights(out: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoints" / f"step-{step:07d}" / "model.safetensors")


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        # the same sums in another order: float32 rounding only
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def one_process(tiny_chat_target_dir: Path, chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one")
    result = train(tiny_chat_target_dir, chat_data, out, "--save-every", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.timeout(600)
def test_two_ranks_compute_what_one_process_computes(tiny_chat_target_dir, chat_data, one_process, tmp_path):
    result = train(tiny_chat_target_dir, chat_data, tmp_path / "two", "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    first = weights(one_process)
    assert_close(weights(tmp_path / "two"), first)
    assert not torch.equal(first["fc.weight"], weights(one_process, 3)["fc.weight"])  # it did train
    # only rank 0 writes: one log line per step, one summary
    log = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    reference = [json.loads(line) for line in (one_process / "train_log.jsonl").read_text().splitlines()]
    for mine, theirs in zip(log, reference, strict=True):  # the global batch's figures, not one rank's
        assert mine["tokens"] == theirs["tokens"]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["ranks"] == 2


@pytest.mark.timeout(600)
def test_gradient_accumulation_computes_the_same_step(tiny_chat_target_dir, chat_data, one_process, tmp_path):
    result = train(tiny_chat_target_dir, chat_data, tmp_path / "acc", "--nproc", "2", "--micro-batch-size", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_close(weights(tmp_path / "acc"), weights(one_process))


@pytest.mark.timeout(600)
def test_a_stopped_run_resumes_exactly_at_the_same_world_size(tiny_chat_target_dir, chat_data, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    two_epochs = ("--nproc", "2", "--max-steps", "12")  # 6 global batches per epoch
    assert train(tiny_chat_target_dir, chat_data, whole, *two_epochs).returncode == 0
    # stopped by its time limit after its first step (mid-epoch), checkpointed, then resumed by a new job: what
    # a kill leaves (the last checkpoint), the same schedule
    first = train(tiny_chat_target_dir, chat_data, cut, *two_epochs, "--max-minutes", "0.0001")
    assert first.returncode == 0, first.stderr[-3000:]
    stopped = json.loads((cut / "summary.json").read_text())["steps"]
    assert 1 <= stopped < 6
    resumed = train(tiny_chat_target_dir, chat_data, cut, *two_epochs, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key, value in weights(whole, 12).items():
        assert torch.equal(value, weights(cut, 12)[key]), key
    # another world size cannot continue it exactly: refused, naming the right one
    other = train(tiny_chat_target_dir, chat_data, cut, "--resume", "--max-steps", "12")
    assert other.returncode != 0
    assert "written by a run of 2 rank(s); resume it with 2" in other.stderr


@pytest.mark.timeout(600)
def test_fsdp_shards_and_computes_what_one_process_computes(tiny_chat_target_dir, chat_data, one_process, tmp_path):
    result = train(tiny_chat_target_dir, chat_data, tmp_path / "fsdp", "--nproc", "2", "--fsdp",
                   "--micro-batch-size", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    # each of the 2 ranks holds about half of the trained parameters (uneven tensors round up on rank 0)
    held = re.search(r"FSDP2: rank 0 holds [\d,]+ of the [\d,]+ trained parameters \(([\d.]+)%\)", result.stdout)
    assert held and 50.0 <= float(held.group(1)) < 51.0, result.stdout[-2000:]
    # the gathered checkpoint is the whole draft, and the same one (micro-batches accumulated before the
    # reduce-scatter, gradients summed)
    assert_close(weights(tmp_path / "fsdp"), weights(one_process))
    final = load_file(tmp_path / "fsdp" / "final" / "model.safetensors")
    torch.testing.assert_close(final["fc.weight"], weights(one_process)["fc.weight"].to(torch.bfloat16),
                               rtol=1e-2, atol=1e-3)


@pytest.mark.timeout(600)
def test_an_fsdp_run_resumes_exactly(tiny_chat_target_dir, chat_data, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ("--nproc", "2", "--fsdp", "--max-steps", "8")
    assert train(tiny_chat_target_dir, chat_data, whole, *args).returncode == 0
    first = train(tiny_chat_target_dir, chat_data, cut, *args, "--max-minutes", "0.0001")
    assert first.returncode == 0, first.stderr[-3000:]
    assert 1 <= json.loads((cut / "summary.json").read_text())["steps"] < 6
    resumed = train(tiny_chat_target_dir, chat_data, cut, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key, value in weights(whole, 8).items():  # the gathered optimizer states went back into the shards
        assert torch.equal(value, weights(cut, 8)[key]), key


def test_the_global_batch_must_split_over_ranks_and_micro_batches() -> None:
    assert micro_batch_size(TrainConfig(batch_size=8), World(0, 2)) == 4
    assert micro_batch_size(TrainConfig(batch_size=8, micro_batch_size=2), World(0, 2)) == 2
    with pytest.raises(ValueError, match="not a multiple of the 3 ranks"):
        micro_batch_size(TrainConfig(batch_size=8), World(0, 3))
    with pytest.raises(ValueError, match="does not divide the 4 examples per rank"):
        micro_batch_size(TrainConfig(batch_size=8, micro_batch_size=3), World(0, 2))


@pytest.mark.timeout(300)
def test_a_dead_rank_stops_the_job_with_a_message(tiny_chat_target_dir, chat_data, tmp_path):
    command = [sys.executable, "-m", "prism_sglang.cli", "train", "--target", str(tiny_chat_target_dir), "--data",
               str(chat_data), "--out", str(tmp_path / "o"), "--draft-vocab-size", "512", "--batch-size", "4",
               "--ttt-steps", "3", "--aux-layers", "0,1,2", "--device", "cpu", "--max-steps", "100000",
               "--nproc", "2"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        log = tmp_path / "o" / "train_log.jsonl"
        deadline = time.monotonic() + 120
        while not (log.is_file() and log.read_text().count("\n") >= 2):  # both ranks are in the loop
            assert time.monotonic() < deadline and job.poll() is None, "training did not start"
            time.sleep(0.5)
        rank1 = rank_pid(job.pid, 1)
        os.kill(rank1, signal.SIGKILL)
        output, _ = job.communicate(timeout=120)  # torchrun notices, stops rank 0, and fails
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode != 0
    assert "local_rank: 1" in output or "rank 1" in output.lower(), output[-2000:]


def rank_pid(torchrun_pid: int, rank: int) -> int:
    """The worker process torchrun started for `rank` (its environment says RANK)."""
    import psutil

    for child in psutil.Process(torchrun_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "prism_sglang.cli" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    raise AssertionError(f"no worker with RANK={rank} under {torchrun_pid}")


def test_shares_of_a_batch_add_up_to_its_gradient(predictable_target) -> None:
    """What ranks and micro-batches rely on, without Adam's indifference to scale: the gradients of a batch's
    shares, each scored against the whole batch's counts, sum to the batch's own gradient."""
    from prism_sglang.engine import SamplingParams
    from prism_sglang.engine.batch import generate_batch
    from prism_sglang.train.data import Example, collate
    from prism_sglang.train.targets import online_batch
    from prism_sglang.train.trainer import new_draft, score_counts, ttt_loss

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, predictable_target.vocab_size, (4,), generator=g).tolist() for _ in range(6)]
    outs = generate_batch(predictable_target, prompts, SamplingParams(max_new_tokens=20, ignore_eos=True),
                          seeds=range(6))
    examples = [Example(tuple(p + o[: 8 + 2 * i]), tuple([False] * 4 + [True] * (8 + 2 * i)))
                for i, (p, o) in enumerate(zip(prompts, outs, strict=True))]  # lengths 12..22
    draft = new_draft(predictable_target, 2, (0, 1), aux_layer_ids=[1, 3, 4], seed=3)
    config = TrainConfig(ttt_steps=3)

    def batch(indices):
        ids, attention, loss_mask = collate([examples[i] for i in indices])
        return online_batch(predictable_target, draft, ids, attention), ids, attention, loss_mask

    def gradients(parts, counts):
        draft.zero_grad(set_to_none=True)
        for targets, ids, attention, loss_mask in parts:
            loss, _ = ttt_loss(draft, targets, ids, attention, loss_mask, config, counts)
            loss.backward()
        return {n: p.grad.clone() for n, p in draft.named_parameters() if p.grad is not None}

    whole = gradients([batch(range(6))], None)
    shares = [batch([0, 2, 4]), batch([1, 3]), batch([5])]
    counts = sum(score_counts(t, a, m, config.ttt_steps) for t, _, a, m in shares)
    split = gradients(shares, counts)
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
    # scored against their own counts instead, the shares would not add up
    wrong = gradients(shares, None)
    assert not torch.allclose(wrong["fc.weight"], whole["fc.weight"], rtol=1e-3, atol=1e-6)
