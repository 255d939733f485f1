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
def _batches(draw, rewards=(0.0, 1.0)):
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
    scores = draw(st.lists(st.sampled_from(rewards), min_size=len(uids), max_size=len(uids)))
    return lp, mask, scores, uids


@settings(max_examples=120, deadline=None)
@given(
    st.one_of(_batches(), _batches(rewards=(-1.0, 0.0, 0.25, 0.5, 1.0, 6.0))),
    st.sampled_from(["linear", "top_fraction"]),
    st.floats(0.05, 1.0),
    st.sampled_from(["within_class", "unbounded"]),
    st.floats(0.0, 1.0),
    st.sampled_from([0.0, 0.3]),
)
def test_vectorised_matches_loop(batch, weighting, frac, shaping, coef, threshold):
    lp, mask, scores, uids = batch
    params = VarianceParams(weighting, frac, coef, shaping)
    res = r3_rewards(lp, mask, torch.tensor(scores), group_index_from_uids(uids), params, threshold)
    r3, shaped = r3_rewards_loop(lp, mask, torch.tensor(scores), uids, params, threshold)
    torch.testing.assert_close(res.r3, r3, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.shaped, shaped, rtol=1e-6, atol=1e-6)
    assert res.shaped.dtype == shaped.dtype == torch.float64


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(_batches(), _batches(rewards=(-2.0, 0.0, 0.5, 1.0, 1.0 + 1e-3, 6.0))),
    st.sampled_from(["linear", "top_fraction"]),
    st.floats(0.0, 1.0),
    st.sampled_from([0.0, 0.5]),
)
def test_within_class_never_lifts_a_wrong_rollout_above_a_correct_one(batch, weighting, coef, threshold):
    """r' keeps the order of r between the outcome classes of a group and follows R3 inside a class."""
    lp, mask, scores, uids = batch
    params = VarianceParams(weighting=weighting, r3_coef=coef, shaping="within_class")
    res = r3_rewards(lp, mask, torch.tensor(scores), group_index_from_uids(uids), params, threshold)
    for u in set(uids) - {"pad0"}:
        rows = [i for i, v in enumerate(uids) if v == u]
        right = [i for i in rows if scores[i] > threshold]
        wrong = [i for i in rows if scores[i] <= threshold]
        for i in right:
            for k in wrong:
                assert res.shaped[i] > res.shaped[k], (u, i, k, res.shaped.tolist())
        for cls in (right, wrong):  # equal rewards inside a class: r' follows R3 (ties allowed)
            for i in cls:
                for k in cls:
                    if scores[i] == scores[k] and res.r3[i] > res.r3[k] + 1e-4:
                        assert res.shaped[i] >= res.shaped[k]


def test_unbounded_form_can_cross_classes_and_within_class_does_not():
    # 1 correct rollout with a low R3, 3 wrong ones, one of them with a high R3 (issue 15's q0)
    lp = torch.tensor([[-3.0], [-0.1], [-2.0], [-2.5]])
    scores, uids = [1.0, 0.0, 0.0, 0.0], ["q"] * 4
    dro = _run(lp, torch.ones(4, 1), scores, uids, shaping="unbounded", r3_coef=1.0)
    assert dro.shaped[1] > dro.shaped[0]  # DRO's form: the wrong rollout now beats the correct one
    ours = _run(lp, torch.ones(4, 1), scores, uids, shaping="within_class", r3_coef=1.0)
    assert ours.shaped[0] == 1.0  # a class of one: no R3 term
    assert ours.shaped[1] > ours.shaped[2] > ours.shaped[3]  # R3 still orders the wrong ones
    assert bool((ours.shaped[1:] < 0.5).all()) and bool((ours.shaped[1:] > -0.5).all())  # |term| < gap / 2
    z = (lp[1:, 0].double() - lp[1:, 0].double().mean()) / (lp[1:, 0].double().std() + 1e-6)
    torch.testing.assert_close(ours.shaped[1:], 0.5 * torch.tanh(z))


def test_within_class_gap_of_graded_rewards():
    # rewards shaped by the length reward: correct 3.0 and 5.5, wrong -4.0 and -1.0 -> gap 4.0
    lp = torch.tensor([[-0.5], [-2.0], [-0.2], [-3.0]])
    res = _run(lp, torch.ones(4, 1), [3.0, 5.5, -4.0, -1.0], ["q"] * 4, r3_coef=0.8)
    z = 1 / math.sqrt(2) / (1 + 1e-6 * math.sqrt(2) / abs(-0.5 + 2.0))  # two rows: z = +-1/sqrt(2)
    t = 0.8 * 4.0 / 2 * math.tanh(z)
    expected = [3.0 + t, 5.5 - t, -4.0 + t, -1.0 - t]
    torch.testing.assert_close(res.shaped, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)


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
    z = (res.r3.double() - res.r3.double().mean()) / (res.r3.double().std() + 1e-6)
    torch.testing.assert_close(res.shaped, 1.0 + 0.5 * z)  # one class: the within_class term is r3_coef * z


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
        ({"shaping": "bounded"}, "shaping"),
        ({"r3_coef": 1.5}, "r3_coef"),
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


def test_r3_coef_above_one_names_both_keys_and_unbounded_allows_it():
    with pytest.raises(ValueError, match=r"credit\.variance\.r3_coef=1\.5.*credit\.variance\.shaping=within_class"):
        VarianceParams(r3_coef=1.5)
    assert VarianceParams(r3_coef=1.5, shaping="unbounded").r3_coef == 1.5


def test_template_tokens_are_context_not_scored(tiny):
    """The reference "#### 18": the template token varies most across the group, the digits less.
    Only the digits are scored, so R3 ranks rollouts by the answer, not by "did the reasoning stop"."""
    from verl_credit.scoring import reference_answer

    _, tok = tiny
    ids, is_answer = reference_answer(tok, "#### {answer}", "18")
    assert tok.decode(ids) == "#### 18"
    pieces = [tok.decode([t]) for t in ids.tolist()]
    assert [p for p, a in zip(pieces, is_answer.tolist(), strict=True) if a] == ["1", "8"]
    assert "".join(p for p, a in zip(pieces, is_answer.tolist(), strict=True) if not a) == "#### "
    J = ids.numel()
    # rollout 0: reasoning stopped cleanly (template likely), answer unlikely; rollout 2 the other way
    lp = torch.full((3, J), -0.5)
    lp[:, 0] = torch.tensor([-0.01, -4.0, -9.0])  # template token: sigma ~3.7
    lp[:, -2] = torch.tensor([-3.0, -2.0, -0.2])  # answer digits: sigma ~1.2
    lp[:, -1] = torch.tensor([-2.5, -1.5, -0.1])
    scores = [0.0, 0.0, 1.0]
    scored = _run(lp, is_answer.long().expand(3, J), scores, ["q"] * 3, shaping="unbounded")
    everything = _run(lp, torch.ones(3, J, dtype=torch.long), scores, ["q"] * 3, shaping="unbounded")
    assert everything.weights[0].argmax() == 0  # scoring the template: its token takes the weight ...
    assert everything.r3.argmax() == 0  # ... and R3 prefers the wrong rollout whose reasoning "stopped"
    assert scored.weights[0, ~is_answer].abs().sum() == 0 and scored.sigma[0, ~is_answer].abs().sum() == 0
    assert scored.r3.argmax() == 2 and scored.r3.argmin() == 0  # the answer's own tokens decide
