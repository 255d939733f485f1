"""Tree-shaped scoring (``verl_credit.tree``): every token sees exactly its own sequence's context,
and the scores equal one forward per sequence (the naive scorer) within 1e-4 nats in fp32."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verl_credit.scoring import CounterfactualConfig, HFScorer, answer_ids, score_spans
from verl_credit.tree import (
    build_trees,
    forward_trees,
    kv_cache_logprobs,
    pack_rows,
    tree_attention_mask,
)

from .test_scoring import COMPLETIONS, _rollouts


def _context_loop(tree, i):
    """(position, token) pairs query i may attend to, from the mask, one key at a time."""
    mask = tree_attention_mask(
        tree.position_ids[None], tree.segment[None], tree.limit[None], torch.ones(1, tree.num_tokens, dtype=torch.bool)
    )[0, 0]
    return sorted((int(tree.position_ids[j]), int(tree.input_ids[j])) for j in range(tree.num_tokens) if mask[i, j])


def _groups_of(lengths):
    return torch.cat([torch.full((n,), g) for g, n in enumerate(lengths)])


def _edited_group(base: torch.Tensor, rng: torch.Generator, placeholder: int, k: int) -> list[torch.Tensor]:
    """The base, then k variants: a random span overwritten, a copy, a prefix, a new first token."""
    out = [base]
    for j in range(k):
        seq = base.clone()
        kind = j % 4
        if kind == 0:
            s = int(torch.randint(0, base.numel() - 2, (1,), generator=rng))
            seq[s : s + 2] = placeholder
        elif kind == 2:
            seq = seq[: max(3, base.numel() - 2)]
        elif kind == 3:
            seq[0] = placeholder
        out.append(seq)
    return out


def _tree_layout_tokens(prompts, res, rows=None) -> int:
    """sum over scored rollouts of L + sum_k (L - s_k): L = prompt + response up to the answer's
    end, s_k = where span k starts (own answers, one row per rollout)."""
    total = 0
    for i in res.scored.nonzero().flatten().tolist() if rows is None else rows:
        P, L = prompts[i].numel(), prompts[i].numel() + int(res.answer[i, 1])
        starts = res.spans[i, :, 0]
        total += L + sum(L - (P + int(s)) for s in starts[starts >= 0])
    return total


def _targets(seqs, rng):
    rows = []
    for s in seqs:
        t0 = int(torch.randint(1, s.numel(), (1,), generator=rng))
        rows.append([t0, int(torch.randint(t0 + 1, s.numel() + 1, (1,), generator=rng))])
    return torch.tensor(rows)


def test_every_token_sees_exactly_its_own_prefix():
    rng = torch.Generator().manual_seed(0)
    seqs, sizes = [], []
    for n in (9, 12, 7):
        group = _edited_group(torch.randint(3, 50, (n,), generator=rng), rng, placeholder=1, k=5)
        seqs += group
        sizes.append(len(group))
    targets = _targets(seqs, rng)
    for max_tokens in (None, 20):
        trees = build_trees(seqs, targets, _groups_of(sizes), max_tokens)
        checked = 0
        for tree in trees:
            if max_tokens is not None:
                assert tree.num_tokens <= max_tokens
            for v in torch.unique(tree.owners).tolist():  # the positions that predict v's targets
                seq = seqs[v]
                for q, tok in zip(
                    tree.query[tree.owners == v].tolist(), tree.target[tree.owners == v].tolist(), strict=True
                ):
                    p = int(tree.position_ids[q])
                    assert _context_loop(tree, q) == [(t, int(seq[t])) for t in range(p + 1)]
                    assert tok == int(seq[p + 1])
                    checked += 1
        # every target token of every sequence is predicted exactly once
        assert checked == int((targets[:, 1] - targets[:, 0]).sum())
        owners = torch.cat([t.owners for t in trees])
        assert torch.equal(torch.bincount(owners, minlength=len(seqs)), targets[:, 1] - targets[:, 0])


def test_tree_tokens_are_the_base_plus_each_suffix():
    base = torch.arange(10, 30)
    variant = base.clone()
    variant[12:14] = 0  # differs from position 12 on
    seqs, targets = [base, variant, base.clone()], torch.tensor([[15, 20], [15, 20], [15, 20]])
    (tree,) = build_trees(seqs, targets, torch.zeros(3, dtype=torch.long))
    assert tree.num_tokens == 20 + (20 - 12)  # the duplicate adds nothing
    assert tree.position_ids.tolist() == list(range(20)) + list(range(12, 20))
    # rows x width <= budget per forward
    assert pack_rows(build_trees(seqs, targets, None), 45) == [[0, 1], [2]]


def test_a_sequence_longer_than_the_budget_gets_a_row_of_its_own():
    seqs = [torch.arange(1, 41), torch.cat([torch.arange(1, 21), torch.zeros(20, dtype=torch.long)])]
    trees = build_trees(seqs, torch.tensor([[30, 40], [30, 40]]), torch.zeros(2, dtype=torch.long), max_tokens=32)
    assert [t.num_tokens for t in trees] == [40, 20 + 20]  # base alone; then the prefix it needs + suffix


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("budget", [4096, 48])  # one row per rollout; rows cut into several
def test_tree_scores_equal_naive_scores(tiny, attn, budget):
    model, tok = tiny
    prompts, responses = _rollouts(tok)
    prompts, responses = prompts + [prompts[0]], responses + [responses[0]]  # a duplicate rollout
    previous = model.config._attn_implementation
    model.config._attn_implementation = attn
    try:
        naive, tree = (
            score_spans(
                tok,
                HFScorer(model, tok.pad_token_id, budget),
                prompts,
                responses,
                CounterfactualConfig(scoring=mode, max_batch_tokens=budget),
            )
            for mode in ("naive", "tree")
        )
    finally:
        model.config._attn_implementation = previous
    assert torch.isfinite(naive.scores).sum() >= 6 and not naive.scored[3]  # row 3 has no answer
    torch.testing.assert_close(tree.scores, naive.scores, rtol=0, atol=1e-4, equal_nan=True)
    assert tree.naive_tokens == naive.naive_tokens
    if budget == 4096:
        assert tree.forward_tokens == _tree_layout_tokens(prompts, tree, rows=[0, 1, 2]) < 0.7 * naive.forward_tokens
    else:
        assert tree.forward_tokens <= naive.forward_tokens


def test_gold_answers_tree_equals_naive(tiny):
    model, tok = tiny
    prompts, responses = _rollouts(tok)
    gold = [answer_ids(tok, "#### {answer}", a) for a in ("18", "3", "100", "7")]
    res = {
        mode: score_spans(
            tok,
            HFScorer(model, tok.pad_token_id),
            prompts,
            responses,
            CounterfactualConfig(scoring=mode, answer_source="gold"),
            gold_answers=gold,
        )
        for mode in ("naive", "tree")
    }
    assert res["tree"].scored.all()  # gold answers: every rollout has a target
    torch.testing.assert_close(res["tree"].scores, res["naive"].scores, rtol=0, atol=1e-4, equal_nan=True)


def test_kv_cache_path_equals_naive(tiny):
    model, tok = tiny
    rng = torch.Generator().manual_seed(3)
    seqs = _edited_group(torch.randint(3, 300, (30,), generator=rng), rng, tok.pad_token_id, k=6)
    targets, groups = _targets(seqs, rng), torch.zeros(len(seqs), dtype=torch.long)
    expected = HFScorer(model, tok.pad_token_id)(seqs, targets)
    for got, want in zip(kv_cache_logprobs(model, seqs, targets, groups), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_hf_scorer_falls_back_to_the_kv_cache_without_a_4d_mask(tiny, monkeypatch):
    import verl_credit.scoring as scoring

    model, tok = tiny
    prompts, responses = _rollouts(tok)
    config = CounterfactualConfig()
    expected = score_spans(tok, HFScorer(model, tok.pad_token_id), prompts, responses, config)
    monkeypatch.setattr(scoring, "attention_implementation", lambda m: "flash_attention_2")
    used = []
    real = scoring.kv_cache_logprobs
    monkeypatch.setattr(scoring, "kv_cache_logprobs", lambda *a, **k: used.append(1) or real(*a, **k))
    got = score_spans(tok, HFScorer(model, tok.pad_token_id), prompts, responses, config)
    assert used
    torch.testing.assert_close(got.scores, expected.scores, rtol=0, atol=1e-4, equal_nan=True)


def test_a_tree_never_reaches_flash_attention(tiny):
    model, tok = tiny
    trees = build_trees([torch.arange(1, 9)], torch.tensor([[4, 8]]))
    previous = model.config._attn_implementation
    model.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(RuntimeError, match="4D mask"):
            forward_trees(model, trees, tok.pad_token_id)
    finally:
        model.config._attn_implementation = previous


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(6, 24), min_size=1, max_size=3),
    k=st.integers(0, 5),
    budget=st.sampled_from([None, 30, 60]),
    seed=st.integers(0, 10_000),
)
def test_random_groups_tree_equals_separate_forwards(tiny, lengths, k, budget, seed):
    model, tok = tiny
    rng = torch.Generator().manual_seed(seed)
    seqs, sizes = [], []
    for n in lengths:
        group = _edited_group(torch.randint(3, 300, (n,), generator=rng), rng, tok.pad_token_id, k)
        seqs += group
        sizes.append(len(group))
    targets = _targets(seqs, rng)
    expected = HFScorer(model, tok.pad_token_id)(seqs, targets)
    trees = build_trees(seqs, targets, _groups_of(sizes), budget)
    got: dict[int, torch.Tensor] = {}
    for batch in pack_rows(trees, budget or 4096):
        got.update(forward_trees(model, [trees[i] for i in batch], tok.pad_token_id))
    assert sorted(got) == list(range(len(seqs)))
    for v, want in enumerate(expected):
        torch.testing.assert_close(got[v], want, rtol=0, atol=1e-4)


def test_smollm2_tree_equals_naive_on_gsm8k_style_solutions():
    pytest.importorskip("gguf")
    from verl_credit.offline import load_smollm2

    try:
        model, tok = load_smollm2()
    except ModuleNotFoundError as err:
        pytest.skip(str(err))
    prompts = [torch.tensor(tok(f"Question {i}: how many?")["input_ids"]) for i in range(len(COMPLETIONS))]
    responses = [torch.tensor(tok(c)["input_ids"] + [tok.eos_token_id]) for c in COMPLETIONS]
    res = {
        mode: score_spans(
            tok, HFScorer(model, tok.pad_token_id), prompts, responses, CounterfactualConfig(scoring=mode)
        )
        for mode in ("naive", "tree")
    }
    assert int(torch.isfinite(res["naive"].scores).sum()) >= 6
    torch.testing.assert_close(res["tree"].scores, res["naive"].scores, rtol=0, atol=1e-4, equal_nan=True)
    assert res["tree"].forward_tokens == _tree_layout_tokens(prompts, res["tree"])
    assert not math.isnan(float(res["tree"].scores[0, 0]))
