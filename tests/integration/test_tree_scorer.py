"""The workers' tree scorer (``integration/tree_scorer.py``): its fallbacks and its attention switch.

Its numbers through verl's real FSDP engine are checked in tests/gpu/engine_stage_check.py (one
process) and in the real CPU steps (dp 1 and 2); here only the decisions around the forward.
"""

import logging
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from verl_credit.integration import tree_scorer
from verl_credit.integration.tree_scorer import EngineTreeScorer, scoring_attention, tree_unsupported
from verl_credit.scoring import HFScorer


class _Engine:
    """The attributes of verl's FSDPEngine the tree scorer reads (module, eval_mode, dp group,
    autocast dtype, Ulysses size), over a plain transformers model."""

    def __init__(self, model, sp=1):
        self.module, self.ulysses_sequence_parallel_size, self._autocast_dtype = model, sp, torch.float32
        self.eval_calls = 0

    def eval_mode(self):
        self.eval_calls += 1
        return nullcontext()

    def get_data_parallel_group(self):
        return None


def _actor(model, sp=1, fused=False):
    return SimpleNamespace(engine=_Engine(model, sp), engine_config=SimpleNamespace(use_fused_kernels=fused))


def _group(tok):
    base = torch.tensor(tok("Janet sells 16 - 3 - 4 = 9 duck eggs. She makes 9 * 2 = $18.\n#### 18")["input_ids"])
    variant = base.clone()
    variant[3:6] = tok.pad_token_id
    return [base, variant], torch.tensor([[base.numel() - 2, base.numel()]] * 2), torch.zeros(2, dtype=torch.long)


def test_reasons_to_fall_back(tiny):
    model, _ = tiny
    assert tree_unsupported(_actor(model)) is None
    assert "Ulysses" in tree_unsupported(_actor(model, sp=2))
    assert "fused" in tree_unsupported(_actor(model, fused=True))
    assert "FSDP" in tree_unsupported(SimpleNamespace())


def test_tree_scores_equal_naive_and_the_attention_is_restored(tiny):
    model, tok = tiny
    seqs, targets, groups = _group(tok)
    actor = _actor(model)
    model.config._attn_implementation = "eager"  # what verl may have loaded; the tree call runs sdpa
    try:
        scorer = EngineTreeScorer(actor, {"temperature": 1.0}, 4096, tok.pad_token_id, naive=None)
        got = scorer(seqs, targets, groups)
        assert model.config._attn_implementation == "eager"
    finally:
        model.config._attn_implementation = "sdpa"
    want = HFScorer(model, tok.pad_token_id)(seqs, targets)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4)
    assert actor.engine.eval_calls == 1
    assert scorer.forward_tokens == seqs[0].numel() + seqs[1].numel() - 3  # the variant's suffix from 3 on


def test_a_model_without_sdpa_runs_the_tree_with_eager_attention(tiny, monkeypatch):
    model, tok = tiny
    seqs, targets, groups = _group(tok)
    assert tree_scorer.tree_attention(model) == "sdpa"
    monkeypatch.setattr(type(model), "_supports_sdpa", False)
    assert tree_scorer.tree_attention(model) == "eager"
    seen = []
    real = tree_scorer.forward_trees
    monkeypatch.setattr(
        tree_scorer, "forward_trees", lambda m, *a, **k: seen.append(m.config._attn_implementation) or real(m, *a, **k)
    )
    got = EngineTreeScorer(_actor(model), {}, 4096, tok.pad_token_id, naive=None)(seqs, targets, groups)
    assert seen == ["eager"] and model.config._attn_implementation == "sdpa"
    for g, w in zip(got, HFScorer(model, tok.pad_token_id)(seqs, targets), strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4)


def test_attention_is_restored_after_an_error(tiny):
    model, _ = tiny
    with pytest.raises(ValueError), scoring_attention(model, "eager"):
        assert model.config._attn_implementation == "eager"
        raise ValueError
    assert model.config._attn_implementation == "sdpa"


def test_unsupported_engine_scores_naively_and_says_so_once(tiny, caplog, monkeypatch):
    model, tok = tiny
    seqs, targets, groups = _group(tok)
    calls = []
    naive = HFScorer(model, tok.pad_token_id)

    def engine_path(sequences, t):
        calls.append(len(sequences))
        return naive(sequences, t)

    monkeypatch.setattr(tree_scorer, "_warned", set())
    scorer = EngineTreeScorer(_actor(model, fused=True), {}, 4096, tok.pad_token_id, engine_path)
    with caplog.at_level(logging.WARNING, logger=tree_scorer.__name__):
        scorer(seqs, targets, groups)
        scorer(seqs, targets, groups)
    assert calls == [2, 2]
    assert sum("falls back to naive" in r.getMessage() for r in caplog.records) == 1
    assert scorer.forward_tokens == 2 * sum(s.numel() for s in seqs)
