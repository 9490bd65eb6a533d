"""Trainer: it learns (overfits a tiny set), resumes exactly, caches target outputs faithfully; upcycling is
exact; prepare-data keeps evaluation prompts out and loses no good line."""

import json

import pytest
import torch

from prism_sglang.checkpoint import load_draft, save_draft
from prism_sglang.engine import SamplingParams, SpeculativeEngine, TreeSettings
from prism_sglang.engine.batch import generate_batch
from prism_sglang.train.data import Example, collate
from prism_sglang.train.targets import FeatureCache, causal_mask, online_batch, target_fingerprint
from prism_sglang.train.trainer import TrainConfig, Trainer, new_draft, resolve_precision, ttt_loss
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
