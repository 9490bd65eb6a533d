"""Trainer: it learns (overfits a tiny set), resumes exactly, caches target outputs faithfully; upcycling is
exact; prepare-data keeps evaluation prompts out and loses no good line."""

import json
import random
from dataclasses import replace

import pytest
import torch

from prism_sglang.checkpoint import load_draft, save_draft
from prism_sglang.engine import SamplingParams, SpeculativeEngine, TreeSettings
from prism_sglang.engine.batch import generate_batch
from prism_sglang.train.data import Example, batches, collate
from prism_sglang.train.heap import MALLOC_TRIM, HeapTrim, resident_bytes
from prism_sglang.train.targets import FeatureCache, causal_mask, online_batch, target_fingerprint
from prism_sglang.train.trainer import (
    TrainConfig,
    Trainer,
    in_vocab_read,
    new_draft,
    resolve_precision,
    ttt_loss,
)
from prism_sglang.train.upcycle import upcycle
from prism_sglang.train.vocab import build_draft_vocab


def _examples(target, n=32, length=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, target.vocab_size, (4,), generator=g).tolist() for _ in range(n)]
    outs = generate_batch(target, prompts, SamplingParams(max_new_tokens=length, ignore_eos=True), seeds=range(n))
    return [Example(tuple(p + o), tuple([False] * 4 + [True] * len(o))) for p, o in zip(prompts, outs, strict=True)]


def test_overfits_a_tiny_dataset(predictable_target):
    examples = _examples(predictable_target, n=16)
    draft = new_draft(predictable_target, 2, (0, 1), aux_layer_ids=[1, 3, 4])
    config = TrainConfig(ttt_steps=4, batch_size=8, max_steps=120, learning_rate=1e-2, warmup_ratio=0.05)
    state = Trainer(predictable_target, draft, examples, config, progress=False).run()
    first, last = state.history[0]["loss"], state.history[-1]["loss"]
    # The soft targets' own entropy bounds the loss from below; the bound leaves the draft within 0.5 nat of it.
    ids, attention, loss_mask = collate(examples)
    entropy = _target_entropy(predictable_target, draft, ids, attention, loss_mask)
    assert last < entropy + 0.5 < first, (first, last, entropy)


def _target_entropy(target, draft, ids, attention, loss_mask):
    batch = online_batch(target, draft, ids, attention)
    p = torch.softmax(batch.logits[:, 1:-1], -1)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    mask = loss_mask[:, 2:]
    return float((h * mask).sum() / mask.sum())


def test_resume_equals_an_uninterrupted_run(predictable_target, tmp_path):
    examples = _examples(predictable_target, n=20)
    config = TrainConfig(ttt_steps=3, batch_size=6, max_steps=9, learning_rate=5e-3, save_every=4)

    def fresh():
        return new_draft(predictable_target, 2, (0, 1), aux_layer_ids=[1, 3, 4], seed=1)

    whole = fresh()
    Trainer(predictable_target, whole, examples, config, progress=False).run()
    # Interrupted after step 4's checkpoint: a new process resumes from disk.
    first = fresh()
    Trainer(predictable_target, first, examples, config, tmp_path, progress=False).run(until=5)
    # killed after step 5, its last checkpoint step 4's: the resumed run does step 5 again, logged once
    (tmp_path / "checkpoints" / "step-0000005").rename(tmp_path / "step-5-lost")
    resumed = fresh()
    state = Trainer(predictable_target, resumed, examples, config, tmp_path, progress=False).run(resume=True)
    assert state.step == 9
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 10))


def test_a_time_limit_stops_the_run_with_a_checkpoint(predictable_target, tmp_path):
    examples = _examples(predictable_target, n=20)
    config = TrainConfig(ttt_steps=3, batch_size=6, max_steps=100_000, learning_rate=5e-3, max_seconds=1.0)
    draft = new_draft(predictable_target, 2, (0, 1), aux_layer_ids=[1, 3, 4], seed=1)
    trainer = Trainer(predictable_target, draft, examples, config, tmp_path, progress=False)
    state = trainer.run()
    assert 1 <= state.step < 100_000
    assert trainer.latest_checkpoint() == trainer.checkpoint_dir(state.step)  # saved as at the end


def test_feature_cache_matches_online_targets(predictable_target, tmp_path):
    examples = _examples(predictable_target, n=10)
    draft = new_draft(predictable_target, 1, (0,), aux_layer_ids=[1, 3, 4])
    cache = FeatureCache(tmp_path, target_fingerprint("tiny", [1, 3, 4]))
    assert cache.missing(examples) == list(range(10))
    cache.build(predictable_target, examples[:4], batch_size=3, progress=False)  # a first, smaller run
    assert cache.missing(examples) == list(range(4, 10))
    cache.build(predictable_target, examples, batch_size=3, progress=False)  # only the new examples
    assert cache.missing(examples) == [] and len(list(tmp_path.glob("shard-*"))) == 2
    with pytest.raises(ValueError, match="caches another target"):
        FeatureCache(tmp_path, target_fingerprint("other", [1, 3, 4])).missing(examples)
    cache.load(predictable_target, draft, examples)
    indices = [7, 2, 5]
    ids, attention, _ = collate([examples[i] for i in indices])
    cached = cache.batch(indices, draft, torch.device("cpu"))
    online = online_batch(predictable_target, draft, ids, attention)
    torch.testing.assert_close(cached.features, online.features, atol=2e-2, rtol=2e-3)  # stored as fp16
    torch.testing.assert_close(cached.logits, online.logits, atol=5e-2, rtol=1e-2)
    assert torch.equal(cached.in_vocab, online.in_vocab)


def test_upcycled_draft_drafts_exactly_like_its_source(predictable_target, trained_draft, tmp_path):
    source = upcycle(trained_draft, 1, (0,))  # the trained draft's module 0 as an EAGLE-3 draft
    save_draft(source, tmp_path / "eagle3", dtype=None)
    source = load_draft(tmp_path / "eagle3", predictable_target.config, predictable_target.embedding_weight())
    prism = upcycle(source, 2, (0, 1))
    prism.attach_embedding(predictable_target.embedding_weight())
    assert prism.config.num_modules == 2 and torch.equal(prism.layers[1].mlp.up_proj.weight,
                                                          source.layers[0].mlp.up_proj.weight)
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    for prompt in ([5, 6, 7], [40, 3, 9, 11]):
        a = SpeculativeEngine(predictable_target, source, TreeSettings(5, 2, 8)).generate(prompt, params)
        b = SpeculativeEngine(predictable_target, prism, TreeSettings(5, 2, 8)).generate(prompt, params)
        assert a.output_ids == b.output_ids and a.stats.accept_lengths == b.stats.accept_lengths


def test_draft_vocab_from_frequencies():
    ids = build_draft_vocab([5, 5, 5, 9, 9, 1, 7, 7, 7, 7], draft_vocab_size=3, vocab_size=12)
    assert ids.tolist() == [5, 7, 9]
    padded = build_draft_vocab([4, 4], draft_vocab_size=3, vocab_size=12)
    assert padded.tolist() == [0, 1, 4]
    with pytest.raises(ValueError):
        build_draft_vocab([1], draft_vocab_size=13, vocab_size=12)


def test_online_targets_equal_the_full_logits_of_a_padded_batch(predictable_target):
    """The draft-vocabulary logits from the final hidden state, the block-wise argmax and the plain causal
    attention of a right-padded batch give what the full [B, T, V] logits of a padding-masked forward give."""
    examples = _examples(predictable_target, n=3, length=30)
    examples[1] = Example(examples[1].input_ids[:17], examples[1].loss_mask[:17])  # unequal lengths: padding
    vocab = build_draft_vocab([t for e in examples for t in e.input_ids], 40, predictable_target.vocab_size)
    draft = new_draft(predictable_target, 1, (0,), vocab, aux_layer_ids=[1, 3, 4])
    ids, attention, _ = collate(examples)
    assert causal_mask(attention) is None
    assert causal_mask(attention.flip(-1)) is not None  # left padding keeps its mask
    batch = online_batch(predictable_target, draft, ids, attention)
    full = predictable_target.forward(ids, attention_mask=attention.long())
    real = attention
    torch.testing.assert_close(batch.logits[real], full.logits[..., draft.draft_to_target][real], atol=1e-4, rtol=1e-5)
    assert torch.equal(batch.in_vocab[real], draft.t2d[full.logits.argmax(-1)][real])
    torch.testing.assert_close(batch.features[real], full.features[real], atol=1e-4, rtol=1e-5)


def test_the_argmax_scanned_where_the_loss_reads_it_gives_the_same_loss(predictable_target):
    """`online_batch(..., argmax_at=in_vocab_read(...))` scans the full vocabulary only before scored tokens:
    `in_vocab` there as the full scan's, False elsewhere, and the loss and its metrics unchanged."""
    examples = _examples(predictable_target, n=4, length=20)
    examples[2] = Example(examples[2].input_ids[:15], examples[2].loss_mask[:15])  # padding
    vocab = build_draft_vocab([t for e in examples for t in e.input_ids], 6, predictable_target.vocab_size)
    draft = new_draft(predictable_target, 2, (0, 1), vocab, aux_layer_ids=[1, 3, 4])
    ids, attention, loss_mask = collate(examples)
    read = in_vocab_read(attention, loss_mask)
    full = online_batch(predictable_target, draft, ids, attention)
    scanned = online_batch(predictable_target, draft, ids, attention, read)
    assert 0 < int(read.sum()) < read.numel() and not full.in_vocab[read].all()  # the case is not trivial
    assert torch.equal(scanned.in_vocab[read], full.in_vocab[read]) and not scanned.in_vocab[~read].any()
    config = TrainConfig(ttt_steps=3)
    (loss_full, metrics_full), (loss_scanned, metrics_scanned) = (
        ttt_loss(draft, t, ids, attention, loss_mask, config) for t in (full, scanned))
    assert torch.equal(loss_full, loss_scanned) and metrics_full == metrics_scanned


def test_bf16_loss_tracks_the_fp32_loss(predictable_target):
    examples = _examples(predictable_target, n=6)
    draft = new_draft(predictable_target, 2, (0, 1), aux_layer_ids=[1, 3, 4])
    ids, attention, loss_mask = collate(examples)
    targets = online_batch(predictable_target, draft, ids, attention)
    losses = {}
    for precision in ("fp32", "bf16"):
        draft.zero_grad()
        config = TrainConfig(ttt_steps=3, precision=precision)
        loss, metrics = ttt_loss(draft, targets, ids, attention, loss_mask, config)
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in draft.parameters())
        assert draft.fc.weight.grad.dtype == torch.float32  # fp32 master weights under autocast
        losses[precision] = metrics.losses
    torch.testing.assert_close(torch.tensor(losses["bf16"]), torch.tensor(losses["fp32"]), rtol=0.03, atol=0.03)


def test_precision_choice():
    assert resolve_precision("fp32", "cuda") == "fp32" and resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="fp32 or bf16"):
        TrainConfig(precision="auto")


def _padded_tokens(examples, epoch_batches):
    return sum(max(len(examples[i].input_ids) for i in b) * len(b) for b in epoch_batches)


def test_batches_grouped_by_length_pad_little_and_stay_shuffled():
    rng = random.Random(0)
    examples = [Example((1,) * n, (True,) * n) for n in (rng.randint(1, 768) for _ in range(1000))]
    grouped = batches(examples, 8, seed=3, epoch=0)
    assert sorted(i for b in grouped for i in b) == list(range(1000))  # every example once
    assert sorted(map(len, grouped))[1:] == [8] * 124  # one short batch at most (1000 = 125 x 8)
    assert grouped == batches(examples, 8, seed=3, epoch=0) != batches(examples, 8, seed=3, epoch=1)
    real = sum(len(e.input_ids) for e in examples)
    shuffled = batches(examples, 8, seed=3, epoch=0, group_by_length=False)
    assert real / _padded_tokens(examples, grouped) > 0.97 > 0.8 > real / _padded_tokens(examples, shuffled)
    longest = [max(len(examples[i].input_ids) for i in b) for b in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # batches in shuffled order
    # without grouping: consecutive slices of the seeded shuffle, the order runs before the option trained on
    order = list(range(1000))
    random.Random(3 * 1_000_003).shuffle(order)
    assert shuffled == [order[i : i + 8] for i in range(0, 1000, 8)]


def test_a_run_resumes_only_with_the_batching_it_was_written_with(predictable_target, tmp_path):
    examples = _examples(predictable_target, n=12)
    config = TrainConfig(ttt_steps=2, batch_size=4, max_steps=3, save_every=1)

    def trainer(**changes):
        draft = new_draft(predictable_target, 2, (0, 1), aux_layer_ids=[1, 3, 4])
        return Trainer(predictable_target, draft, examples, replace(config, **changes), tmp_path, progress=False)

    trainer().run(until=1)
    with pytest.raises(ValueError, match="resume it with --group-by-length"):
        trainer(group_by_length=False).run(resume=True)
    # a checkpoint written before the option existed was trained on shuffled batches
    state_file = tmp_path / "checkpoints" / "step-0000001" / "trainer" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["group_by_length"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="resume it with --no-group-by-length"):
        trainer().run(resume=True)
    assert trainer(group_by_length=False).run(resume=True).step == 3


@pytest.mark.skipif(MALLOC_TRIM is None, reason="glibc's malloc_trim only")
def test_the_heap_is_trimmed_once_resident_memory_outgrows_the_slack():
    MALLOC_TRIM(0)  # free heap pages this process already holds would take the blocks below without growing it
    trim = HeapTrim(slack_bytes=50_000_000)
    assert not trim.after_step()  # the first step sets the baseline
    # 200 MB written, in blocks under the mmap threshold: glibc's heap
    blocks = [bytes([i % 251]) * 100_000 for i in range(2_000)]
    kept = blocks[::10]  # every tenth block stays, pinning the heap around the freed ones
    blocks.clear()
    grown = resident_bytes()
    assert trim.after_step() and trim.trims == 1
    assert grown - resident_bytes() > 100e6
    assert not trim.after_step() and trim.baseline == pytest.approx(resident_bytes(), rel=0.05)  # a new baseline
    assert len(kept) == 200
