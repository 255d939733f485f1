"""Variance-weighted reward (DRO's R3): vectorised vs loop, a constructed case, edge cases."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.variance import VarianceParams, r3_rewards, r3_rewards_loop


def _run(lp, mask, scores, uids, **kw):
    return r3_rewards(
        lp, mask, torch.as_tensor(scores, dtype=torch.float32), group_index_from_uids(uids), VarianceParams(**kw)
    )


@st.composite
def _batches(draw):
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    uids, lens = [], {}
    for k, n in enumerate(sizes):
        lens[f"g{k}"] = draw(st.integers(1, 6))
        uids += [f"g{k}"] * n
    uids += ["pad0"] * draw(st.integers(0, 2))
    J = max(lens.values())
    lp = torch.tensor(draw(st.lists(st.floats(-8, 0), min_size=len(uids) * J, max_size=len(uids) * J))).reshape(-1, J)
    mask = torch.zeros(len(uids), J)
    for i, u in enumerate(uids):
        mask[i, : lens.get(u, 0)] = 1
    scores = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=len(uids), max_size=len(uids)))
    return lp, mask, scores, uids


@settings(max_examples=80, deadline=None)
@given(_batches(), st.sampled_from(["linear", "top_fraction"]), st.floats(0.05, 1.0), st.floats(0.0, 2.0))
def test_vectorised_matches_loop(batch, weighting, frac, coef):
    lp, mask, scores, uids = batch
    res = _run(lp, mask, scores, uids, weighting=weighting, frac=frac, r3_coef=coef)
    r3, shaped = r3_rewards_loop(lp, mask, torch.tensor(scores), uids, VarianceParams(weighting, frac, coef))
    torch.testing.assert_close(res.r3, r3, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.shaped, shaped, rtol=1e-5, atol=1e-5)


def test_reasoning_dependent_token_gets_almost_all_the_weight():
    # 4 rollouts, reference of 5 tokens: only token 2's log-prob depends on the reasoning
    lp = torch.tensor([[-0.1, -2.0, -0.5, -1.0, -0.3]]).repeat(4, 1)
    lp[:, 2] = torch.tensor([-0.2, -4.0, -1.5, -6.0])
    lp[:, [0, 1, 3, 4]] += torch.randn(4, 4) * 1e-3  # tiny noise elsewhere
    res = _run(lp, torch.ones(4, 5), [1.0, 0.0, 1.0, 0.0], ["q"] * 4)
    w = res.weights[0]
    assert w[2] / w.sum() > 0.99
    # R3 then ranks rollouts by that token: the most confident reasoning gets the highest R3
    assert res.r3.argmax() == 0 and res.r3.argmin() == 3
    top = _run(lp, torch.ones(4, 5), [1.0, 0.0, 1.0, 0.0], ["q"] * 4, weighting="top_fraction", frac=0.2)
    assert top.weights[0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_r3_separates_rollouts_of_an_all_correct_group():
    lp = torch.tensor([[-0.1, -0.2], [-3.0, -0.2], [-1.0, -0.2]])
    res = _run(lp, torch.ones(3, 2), [1.0, 1.0, 1.0], ["q"] * 3)
    assert res.contrast.all()
    assert res.shaped[0] > res.shaped[2] > res.shaped[1]  # the binary reward alone gives no contrast
    z = (res.r3 - res.r3.mean()) / (res.r3.std() + 1e-6)
    torch.testing.assert_close(res.shaped, 1.0 + 0.5 * z)


def test_identical_rollouts_and_groups_of_one_fall_back_to_the_plain_reward():
    lp = torch.tensor([[-1.0, -2.0], [-1.0, -2.0], [-0.5, -0.7]])
    res = _run(lp, torch.ones(3, 2), [1.0, 0.0, 1.0], ["same", "same", "alone"])
    assert not res.contrast.any()
    assert res.shaped.tolist() == [1.0, 0.0, 1.0] and (res.r3 == 0).all()


def test_reference_of_one_token():
    lp = torch.tensor([[-0.1], [-2.0], [-1.0]])
    res = _run(lp, torch.ones(3, 1), [1.0, 0.0, 0.0], ["q"] * 3)
    torch.testing.assert_close(res.r3, lp[:, 0])  # one token: R3 is its log-prob
    assert res.weights[0, 0] == pytest.approx(1.0)


def test_padding_and_reference_less_rows_are_left_alone():
    lp = torch.tensor([[-1.0, -2.0], [-0.2, -0.4], [-9.0, -9.0]])
    mask = torch.tensor([[1, 1], [1, 1], [0, 0]])
    res = _run(lp, mask, [1.0, 0.0, 5.0], ["q", "q", "pad7"])
    assert res.shaped[2] == 5.0 and res.r3[2] == 0


def test_a_group_whose_rows_disagree_on_the_reference_is_an_error():
    with pytest.raises(ValueError, match="rollout 1: its reference-answer mask differs"):
        _run(torch.zeros(2, 3), torch.tensor([[1, 1, 1], [1, 1, 0]]), [1.0, 0.0], ["q", "q"])


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"weighting": "cubic"}, "weighting"),
        ({"frac": 0.0}, "frac"),
        ({"r3_coef": -1.0}, "r3_coef"),
        ({"answer_template": "no slot"}, "answer_template"),
    ],
)
def test_bad_params_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"credit\.variance\.{key}"):
        VarianceParams(**kwargs)


def test_sigma_is_the_population_std():
    lp = torch.tensor([[-1.0, -2.0], [-3.0, -2.5], [-2.0, -2.0]])
    res = _run(lp, torch.ones(3, 2), [1.0, 0.0, 0.0], ["q"] * 3)
    torch.testing.assert_close(res.sigma[0], lp.std(dim=0, unbiased=False))
    assert math.isclose(float(res.weights[0].mean()), 1.0, rel_tol=1e-6)  # linear: w = sigma / mean sigma
