"""Counterfactual weights: importance normalisation, the controls, vectorised vs loop weights."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_credit.core.counterfactual import (
    WeightParams,
    control_importance,
    span_importance,
    token_significance,
    token_significance_loop,
    token_weights,
    token_weights_loop,
)

NAN = math.nan


def test_importance_by_hand():
    # S(r) = -5; masking span 0 drops the answer to -7 (critical), span 1 to -5.5, span 2 raises it (distractor)
    scores = torch.tensor([[-5.0, -7.0, -5.5, -4.0, NAN]])
    D, imp = span_importance(scores)
    assert D[0, :3].tolist() == [-2.0, -0.5, 1.0] and math.isnan(D[0, 3])
    # I = -D = (2, 0.5, -1): min-max -> (1, 0.5, 0)
    assert imp[0, :3].tolist() == pytest.approx([1.0, 0.5, 0.0]) and math.isnan(imp[0, 3])


def test_all_equal_importances_give_one_half_and_absent_rows_stay_nan():
    D, imp = span_importance(torch.tensor([[-3.0, -3.0, -3.0], [-1.0, -2.0, NAN], [NAN, NAN, NAN]]))
    assert imp[0].tolist() == [0.5, 0.5]
    assert imp[1, 0] == 0.5  # one span: all equal
    assert torch.isnan(imp[2]).all()


def test_controls():
    imp = torch.tensor([[0.0, 0.25, 1.0, NAN]])
    same = control_importance(imp, "counterfactual")
    assert torch.equal(same.nan_to_num(-1.0), imp.nan_to_num(-1.0)) and torch.isnan(same[0, 3])
    assert control_importance(imp, "inverted")[0, :3].tolist() == [1.0, 0.75, 0.0]
    r1 = control_importance(imp, "random", torch.Generator().manual_seed(3))
    r2 = control_importance(imp, "random", torch.Generator().manual_seed(3))
    r3 = control_importance(imp, "random", torch.Generator().manual_seed(4))
    assert torch.equal(r1[:, :3], r2[:, :3]) and not torch.equal(r1[:, :3], r3[:, :3])
    assert ((r1[:, :3] >= 0) & (r1[:, :3] <= 1)).all() and torch.isnan(r1[0, 3])
    assert torch.isnan(control_importance(imp, "uniform")).all()


def test_weights_by_hand():
    imp = torch.tensor([[1.0, 0.0, NAN]])
    spans = torch.tensor([[[0, 2], [3, 5], [-1, -1]]])
    answer = torch.tensor([[6, 8]])
    w = token_weights(imp, spans, answer, 9, WeightParams())
    assert w[0].tolist() == [2.0, 2.0, 1.0, 0.5, 0.5, 1.0, 1.5, 1.5, 1.0]
    assert torch.equal(token_weights(imp, spans, answer, 9, WeightParams(mode="uniform")), torch.ones(1, 9))


@st.composite
def _layouts(draw):
    B, T, S = draw(st.integers(1, 5)), draw(st.integers(1, 30)), draw(st.integers(1, 6))
    spans = torch.full((B, S, 2), -1, dtype=torch.long)
    answer = torch.full((B, 2), -1, dtype=torch.long)
    imp = torch.full((B, S), NAN)
    for i in range(B):
        cuts = sorted(draw(st.lists(st.integers(0, T), min_size=0, max_size=2 * S, unique=True)))
        pairs = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if b > a][:S]
        for k, (a, b) in enumerate(pairs):
            spans[i, k] = torch.tensor([a, b])
            imp[i, k] = draw(st.floats(0, 1))
        if pairs and draw(st.booleans()):
            answer[i] = torch.tensor([pairs[-1][1], T])
    return imp, spans, answer, T


@settings(max_examples=120, deadline=None)
@given(
    _layouts(),
    st.sampled_from(["counterfactual", "uniform"]),
    st.floats(0.1, 1.0),
    st.floats(1.0, 3.0),
    st.booleans(),
    st.data(),
)
def test_vectorised_weights_match_loop(layout, mode, w_min, w_max, conserve, data):
    imp, spans, answer, T = layout
    lengths = torch.tensor([data.draw(st.integers(0, T)) for _ in range(imp.shape[0])])
    mask = (torch.arange(T) < lengths.unsqueeze(1)).long()
    params = WeightParams(mode=mode, w_min=w_min, w_max=w_max, answer_weight=1.7, conserve_gradient=conserve)
    torch.testing.assert_close(
        token_weights(imp, spans, answer, T, params, mask), token_weights_loop(imp, spans, answer, T, params, mask)
    )


def test_conserve_gradient_by_hand():
    # the weights of test_weights_by_hand, 8 valid tokens of 9: (2+2+1+.5+.5+1+1.5+1.5) = 10 -> scale 0.8
    imp = torch.tensor([[1.0, 0.0, NAN], [NAN, NAN, NAN]])
    spans = torch.tensor([[[0, 2], [3, 5], [-1, -1]], [[-1, -1]] * 3])
    answer = torch.tensor([[6, 8], [-1, -1]])
    mask = torch.tensor([[1] * 8 + [0], [1] * 4 + [0] * 5])
    w = token_weights(imp, spans, answer, 9, WeightParams(conserve_gradient=True), mask)
    assert w[0].tolist() == pytest.approx([1.6, 1.6, 0.8, 0.4, 0.4, 0.8, 1.2, 1.2, 1.0])  # padding untouched
    assert w[1].tolist() == [1.0] * 9  # not scored: all 1 already has mean 1
    off = token_weights(imp, spans, answer, 9, WeightParams(), mask)
    assert off[0].tolist() == [2.0, 2.0, 1.0, 0.5, 0.5, 1.0, 1.5, 1.5, 1.0]  # default: the blog's formula
    with pytest.raises(ValueError, match="response_mask"):
        token_weights(imp, spans, answer, 9, WeightParams(conserve_gradient=True))


@settings(max_examples=80, deadline=None)
@given(_layouts(), st.sampled_from(["counterfactual", "uniform"]), st.data())
def test_conserve_gradient_gives_mean_one_over_valid_tokens(layout, mode, data):
    imp, spans, answer, T = layout
    B = imp.shape[0]
    lengths = torch.tensor([data.draw(st.integers(0, T)) for _ in range(B)])
    mask = torch.arange(T) < lengths.unsqueeze(1)
    params = WeightParams(mode=mode, answer_weight=1.5, conserve_gradient=True)
    w = token_weights(imp, spans, answer, T, params, mask.long()).double()
    plain = token_weights(imp, spans, answer, T, dataclasses.replace(params, conserve_gradient=False)).double()
    for i in range(B):
        n = int(mask[i].sum())
        if n:
            assert float(w[i][mask[i]].mean()) == pytest.approx(1.0, abs=1e-6)
            # a rescaling: the ratios between a rollout's valid weights are kept
            torch.testing.assert_close(w[i][mask[i]] * plain[i][mask[i]].sum() / n, plain[i][mask[i]])
        torch.testing.assert_close(w[i][~mask[i]], plain[i][~mask[i]])  # padding positions untouched


def test_significance_by_hand():
    # S(r) = -2; masking span 0 drops the answer to -5 (I = 3), span 1 to -2.5 (I = 0.5), span 2 raises
    # it to -1 (I = -1): I_hat = (1, 0.375, 0); the gap at 2 and the answer (not measured) count 0
    scores = torch.tensor([[-2.0, -5.0, -2.5, -1.0], [NAN, NAN, NAN, NAN], [-1.0, -4.0, NAN, NAN]])
    spans = torch.tensor([[[0, 2], [3, 5], [5, 7]], [[0, 3], [3, 6], [-1, -1]], [[1, 4], [-1, -1], [-1, -1]]])
    answer = torch.tensor([[7, 9], [-1, -1], [4, 6]])
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 9:] = 0
    mask[2, 6:] = 0
    sig = token_significance(scores, spans, mask)
    assert sig.dtype == torch.float64
    assert sig[0].tolist() == [1.0, 1.0, 0.0, 0.375, 0.375, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert sig[1].tolist() == [0.0] * 10  # not scored (no answer): no token was measured to matter
    assert sig[2].tolist() == [0.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # one span: 0.5
    assert answer[0, 0] == 7  # (the answer range is not read: its tokens are the target)


@settings(max_examples=80, deadline=None)
@given(_layouts(), st.data())
def test_vectorised_significance_matches_loop(layout, data):
    imp, spans, answer, T = layout
    B, S = imp.shape
    scores = torch.full((B, S + 1), NAN, dtype=torch.float64)
    for i in range(B):
        if data.draw(st.booleans()):  # a scored rollout
            scores[i, 0] = data.draw(st.floats(-20, 0))
            for k in range(S):
                if spans[i, k, 0] >= 0:
                    scores[i, k + 1] = data.draw(st.sampled_from([-3.0, -1.0, scores[i, 0].item()]))
    lengths = torch.tensor([data.draw(st.integers(0, T)) for _ in range(B)])
    mask = (torch.arange(T) < lengths.unsqueeze(1)).long()
    got = token_significance(scores, spans, mask)
    torch.testing.assert_close(got, token_significance_loop(scores, spans, mask))
    assert ((got >= 0) & (got <= 1)).all() and (got[mask == 0] == 0).all()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"mode": "best"}, "mode"),
        ({"w_min": 0.0}, "w_min"),
        ({"w_min": 3.0}, "w_min"),
        ({"answer_weight": -1}, "answer_weight"),
        ({"conserve_gradient": "yes"}, "conserve_gradient"),
        ({"conserve_gradient": 1}, "conserve_gradient"),
    ],
)
def test_bad_params_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"credit\.counterfactual\.{key}"):
        WeightParams(**kwargs)
