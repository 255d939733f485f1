"""KTAE: vectorised estimator vs the loop reference, a group worked by hand, edge cases, properties."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy

from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.ktae import (
    KTAEParams,
    information_gain,
    key_token_values,
    ktae_advantages,
    ktae_advantages_loop,
)


def _run(responses, mask, scores, uids, params=None, **kw):
    params = params or KTAEParams(ignore_token_ids=[])
    return ktae_advantages(responses, mask, scores, group_index_from_uids(uids), params, **kw)


def _random_batch(seed, n_groups=5, vocab=40, T=30):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 9, (n_groups,), generator=g).tolist()
    uids = [f"q{k}" for k, s in enumerate(sizes) for _ in range(s)]
    B = len(uids)
    responses = torch.randint(0, vocab, (B, T), generator=g)
    lengths = torch.randint(0, T + 1, (B,), generator=g)  # includes empty responses
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    scores = (torch.rand(B, generator=g) < 0.5).float()
    return responses, mask, scores, uids


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "params",
    [
        KTAEParams(ignore_token_ids=[]),
        KTAEParams(ignore_token_ids=[0, 3]),
        KTAEParams(use_tf=False, ignore_token_ids=[]),
        KTAEParams(alpha=0.0, beta=2.0, top=0.5, ignore_token_ids=[]),
        KTAEParams(alpha=1.5, beta=0.0, tf_eps=0.1, ignore_token_ids=[1]),
        KTAEParams(fisher="exact", ignore_token_ids=[]),
        KTAEParams(fisher="exact", alpha=1.5, use_tf=False, ignore_token_ids=[2]),
    ],
)
def test_vectorised_matches_loop(seed, params):
    responses, mask, scores, uids = _random_batch(seed)
    res = _run(responses, mask, scores, uids, params)
    for norm in (True, False):
        res = _run(responses, mask, scores, uids, params, norm_adv_by_std=norm)
        adv, K = ktae_advantages_loop(responses, mask, scores, uids, params, norm_adv_by_std=norm)
        torch.testing.assert_close(res.key_token_values, K, rtol=0, atol=1e-6)
        torch.testing.assert_close(res.advantages, adv, rtol=0, atol=1e-5)


def test_small_group_worked_by_hand():
    # correct: [5, 6], [5, 7]; wrong: [6, 8], [8, 8]; no tf term
    responses = torch.tensor([[5, 6], [5, 7], [6, 8], [8, 8]])
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0])
    res = _run(responses, torch.ones(4, 2), scores, ["q"] * 4, KTAEParams(use_tf=False, ignore_token_ids=[]))
    K = res.key_token_values
    # token 5: table [[2,0],[0,2]], p = 1/6 + 1/6, F = exp(-2/3), IG = 1 bit, x = pi/2
    s5 = (math.exp(-2 / 3) + 1.0) * (math.pi / 2) / 2
    k5 = 2 / (1 + math.exp(-s5)) - 1
    # token 7: table [[1,0],[1,2]], pmf (1/2, 1/2) so p = 1, F = 0; IG = 1 - 3/4 H(1/3); x = pi/4
    h13 = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))
    s7 = (1 - 0.75 * h13) * (math.pi / 4) / 2
    k7 = 2 / (1 + math.exp(-s7)) - 1
    assert K[0, 0].item() == pytest.approx(k5, abs=1e-6)
    assert K[2, 1].item() == pytest.approx(-k5, abs=1e-6)  # token 8 mirrors token 5
    assert K[0, 1].item() == pytest.approx(0.0, abs=1e-9)  # token 6: one of each class, p = 1, IG = 0
    assert K[1, 1].item() == pytest.approx(k7, abs=1e-6)
    z = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # mean 0.5, unbiased std sqrt(1/3)
    assert res.advantages[0].tolist() == pytest.approx([z + k5, z + 0.0], abs=1e-6)
    assert res.advantages[3].tolist() == pytest.approx([-z - k5, -z - k5], abs=1e-6)


def test_information_gain_is_mutual_information():
    rng = np.random.default_rng(0)
    cells = torch.tensor(rng.integers(0, 9, size=(500, 4)), dtype=torch.float64)
    cells = cells[cells.sum(1) > 0]
    ours = information_gain(*cells.unbind(1))
    for (a, b, c, d), ig in zip(cells.tolist(), ours.tolist(), strict=True):
        joint = np.array([[a, b], [c, d]]) / (a + b + c + d)  # rows: contains v or not; cols: correct, wrong
        direct = entropy(joint.sum(0), base=2) + entropy(joint.sum(1), base=2) - entropy(joint.ravel(), base=2)
        assert ig == pytest.approx(direct, abs=1e-12)


@pytest.mark.parametrize("rewards", [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
def test_all_correct_or_all_wrong_group_is_zero(rewards):
    responses = torch.tensor([[1, 2, 3], [2, 3, 4], [5, 6, 7]])
    res = _run(responses, torch.ones(3, 3), torch.tensor(rewards), ["q"] * 3)
    assert (res.advantages == 0).all() and (res.key_token_values == 0).all()
    assert not res.mixed_groups.any()


def test_singleton_group_is_zero_and_does_not_crash():
    responses = torch.tensor([[1, 2], [1, 3], [4, 5]])
    res = _run(responses, torch.ones(3, 2), torch.tensor([1.0, 0.0, 1.0]), ["a", "a", "alone"])
    assert (res.advantages[2] == 0).all() and (res.key_token_values[2] == 0).all()
    assert (res.advantages[:2] != 0).any()


def test_empty_responses_and_padding_rows():
    responses = torch.tensor([[1, 2, 3], [1, 9, 9], [4, 4, 4], [7, 7, 7], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]])
    uids = ["q", "q", "q", "pad-x", "pad-x"]
    res = _run(responses, mask, torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0]), uids)
    assert (res.advantages[2] == 0).all()  # empty response: nothing to credit
    assert (res.advantages[3:] == 0).all() and (res.key_token_values[3:] == 0).all()  # padding rows
    assert (res.advantages[1, 1:] == 0).all()  # masked positions
    assert res.outcome_advantage[2] < 0  # the empty response still counts in its group's statistics


def test_large_token_ids_and_ignore_list():
    responses = torch.tensor([[151935, 151643, 10], [151935, 151643, 11], [12, 151643, 13]])
    scores = torch.tensor([1.0, 1.0, 0.0])
    res = _run(responses, torch.ones(3, 3), scores, ["q"] * 3, KTAEParams(ignore_token_ids=[151643]))
    assert (res.key_token_values[:, 1] == 0).all()  # ignored id
    assert res.key_token_values[0, 0] > 0  # in both correct rollouts, no wrong one
    adv, K = ktae_advantages_loop(responses, torch.ones(3, 3), scores, ["q"] * 3, KTAEParams(ignore_token_ids=[151643]))
    torch.testing.assert_close(res.key_token_values, K, rtol=0, atol=1e-6)


def test_correct_threshold():
    responses = torch.tensor([[1, 2], [3, 4], [5, 6]])
    scores = torch.tensor([0.9, 0.4, 0.6])
    params = KTAEParams(ignore_token_ids=[])
    gi = group_index_from_uids(["q"] * 3)
    _, mixed = key_token_values(responses, torch.ones(3, 2), scores > 0.5, gi, params)
    assert mixed.all()
    _, mixed = key_token_values(responses, torch.ones(3, 2), scores > 0.95, gi, params)
    assert not mixed.any()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"alpha": -1.0}, "credit.ktae.alpha"),
        ({"alpha": 0.0, "beta": 0.0}, "credit.ktae.alpha"),
        ({"tf_b": 2.0}, "credit.ktae.tf_b"),
        ({"top": float("nan")}, "credit.ktae.top"),
        ({"ignore_token_ids": [-3]}, "credit.ktae.ignore_token_ids"),
        ({"fisher": "scipy"}, "credit.ktae.fisher"),
    ],
)
def test_bad_params_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        KTAEParams(**kwargs)


def test_fisher_modes_differ_only_through_p():
    # group of 3, one correct: token 7 is in one wrong rollout only, table [[0, 1], [1, 1]]: exact p = 1
    # (F = 0), but 1 - 1 ulp in the authors' float32 arithmetic (F = exp(-2p) ~ 0.135)
    responses = torch.tensor([[5, 6], [7, 6], [8, 6]])
    scores = torch.tensor([1.0, 0.0, 0.0])
    kw = dict(use_tf=False, ignore_token_ids=[])
    authors = _run(responses, torch.ones(3, 2), scores, ["q"] * 3, KTAEParams(fisher="authors", **kw))
    exact = _run(responses, torch.ones(3, 2), scores, ["q"] * 3, KTAEParams(fisher="exact", **kw))
    # token 5 ([[1, 0], [0, 2]], p = 1/3) and token 6 (in all three, x = 0): equal up to float32
    torch.testing.assert_close(authors.key_token_values[0], exact.key_token_values[0], rtol=0, atol=1e-6)
    ig = information_gain(*torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64).unbind()).item()
    x = -math.asin(math.sqrt(0.5))
    k_exact = 2 / (1 + math.exp(-(ig * x / 2))) - 1
    k_authors = 2 / (1 + math.exp(-((math.exp(-2.0) + ig) * x / 2))) - 1
    assert exact.key_token_values[1, 0].item() == pytest.approx(k_exact, abs=1e-6)
    assert authors.key_token_values[1, 0].item() == pytest.approx(k_authors, abs=1e-6)
    assert abs(k_authors - k_exact) > 0.02  # 0.026: the F term alone


def test_warns_once_when_rewards_vary_but_no_group_is_split(monkeypatch, caplog):
    import verl_credit.core.ktae as ktae_module

    monkeypatch.setattr(ktae_module, "_warned_no_split", False)
    responses = torch.tensor([[1, 2], [1, 3], [4, 5], [4, 6]])
    mask = torch.ones(4, 2)
    uids = ["a", "a", "b", "b"]
    with caplog.at_level("WARNING", logger="verl_credit.core.ktae"):
        _run(responses, mask, torch.tensor([1.0, 1.0, 0.0, 0.0]), uids)  # binary, no mixed group: fine
        _run(responses, mask, torch.tensor([0.0, 1.0, 1.0, 0.0]), uids)  # mixed: fine
        assert not caplog.records
        graded = _run(responses, mask, torch.tensor([0.2, 0.9, 0.4, 0.4]), uids)  # all "correct" at 0.0
        assert len(caplog.records) == 1 and "correct_threshold" in caplog.records[0].getMessage()
        assert (graded.key_token_values == 0).all()
        _run(responses, mask, torch.tensor([0.3, 0.6, 0.4, 0.4]), uids)
        assert len(caplog.records) == 1  # once per process
    monkeypatch.setattr(ktae_module, "_warned_no_split", False)
    with caplog.at_level("WARNING", logger="verl_credit.core.ktae"):
        caplog.clear()
        _run(responses, mask, torch.tensor([0.2, 0.9, 0.4, 0.4]), uids, correct_threshold=0.5)  # split: fine
        assert not caplog.records


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="response_mask"):
        _run(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4), torch.zeros(2), ["a", "a"])


# ---------------------------------------------------------------- properties (hypothesis)


@st.composite
def _group_batches(draw):
    n_groups = draw(st.integers(1, 4))
    sizes = [draw(st.integers(1, 6)) for _ in range(n_groups)]
    T = draw(st.integers(1, 12))
    vocab = draw(st.integers(1, 20))
    B = sum(sizes)
    ids = draw(st.lists(st.integers(0, vocab - 1), min_size=B * T, max_size=B * T))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    rewards = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=B, max_size=B))
    uids = [f"g{k}" for k, s in enumerate(sizes) for _ in range(s)]
    responses = torch.tensor(ids, dtype=torch.long).reshape(B, T)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    return responses, mask, torch.tensor(rewards), uids


@settings(max_examples=60, deadline=None)
@given(_group_batches(), st.randoms(use_true_random=False))
def test_permuting_rollouts_within_groups_permutes_the_output(batch, rnd):
    responses, mask, scores, uids = batch
    perm = list(range(len(uids)))
    rnd.shuffle(perm)
    res = _run(responses, mask, scores, uids)
    res_p = _run(responses[perm], mask[perm], scores[perm], [uids[i] for i in perm])
    torch.testing.assert_close(res_p.advantages, res.advantages[perm], rtol=0, atol=1e-6)
    torch.testing.assert_close(res_p.key_token_values, res.key_token_values[perm], rtol=0, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(_group_batches(), st.floats(0.01, 5.0))
def test_key_values_bounded_by_top(batch, top):
    responses, mask, scores, uids = batch
    res = _run(responses, mask, scores, uids, KTAEParams(top=top, ignore_token_ids=[]))
    # strictly inside (-top, top) mathematically; float64 saturates to exactly +-top for |s| > ~37
    assert (res.key_token_values.abs() <= top * (1 + 1e-6)).all()


@settings(max_examples=40, deadline=None)
@given(_group_batches(), _group_batches())
def test_groups_do_not_influence_each_other(first, second):
    r1, m1, s1, u1 = first
    r2, m2, s2, u2 = second
    T = max(r1.shape[1], r2.shape[1])

    def pad(x):
        return torch.nn.functional.pad(x, (0, T - x.shape[1]))

    u2 = [f"other-{u}" for u in u2]
    joint = _run(torch.cat([pad(r1), pad(r2)]), torch.cat([pad(m1), pad(m2)]), torch.cat([s1, s2]), u1 + u2)
    alone = _run(r1, m1, s1, u1)
    n = len(u1)
    torch.testing.assert_close(joint.advantages[:n, : r1.shape[1]], alone.advantages, rtol=0, atol=1e-6)
