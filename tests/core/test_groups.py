"""Group ids and the group-relative outcome advantage, against verl's own GRPO function."""

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from verl_credit.core.groups import (
    group_index_from_uids,
    group_outcome_advantage,
    group_outcome_advantage_loop,
    sequence_scores,
)


def _batch(seed, n_groups=6, max_size=8, T=12):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, max_size + 1, (n_groups,), generator=g).tolist()
    uids = [f"uid-{k}" for k, s in enumerate(sizes) for _ in range(s)]
    perm = torch.randperm(len(uids), generator=g).tolist()  # groups interleaved, as after verl's balancing
    uids = [uids[i] for i in perm]
    B = len(uids)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = torch.randn(B, generator=g).round(decimals=1)
    return rewards, mask, uids


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_matches_verl_grpo(seed, norm_by_std):
    rewards, mask, uids = _batch(seed)
    ref, _ = compute_grpo_outcome_advantage(
        rewards, mask, np.array(uids, dtype=object), norm_adv_by_std_in_grpo=norm_by_std
    )
    z = group_outcome_advantage(sequence_scores(rewards, mask), group_index_from_uids(uids), norm_by_std)
    torch.testing.assert_close(z[:, None] * mask, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_loop_and_vectorised_agree(seed):
    rewards, mask, uids = _batch(seed)
    uids = uids + ["lonely", "pad0", "pad0"]
    rewards = torch.cat([rewards, torch.ones(3, rewards.shape[1])])
    scores = sequence_scores(rewards, torch.ones_like(rewards))
    for norm in (True, False):
        fast = group_outcome_advantage(scores, group_index_from_uids(uids), norm)
        torch.testing.assert_close(fast, group_outcome_advantage_loop(scores, uids, norm), rtol=1e-6, atol=1e-6)


def test_singletons_and_padding_rows_get_zero():
    uids = ["a", "a", "single", "pad123", "pad123"]
    z = group_outcome_advantage(torch.tensor([1.0, 0.0, 5.0, 3.0, 7.0]), group_index_from_uids(uids))
    assert z[2] == 0 and (z[3:] == 0).all()
    assert z[0] > 0 > z[1]


def test_group_index():
    gi = group_index_from_uids(["b", "a", "b", "pad9", "c"])
    assert gi.group.tolist() == [1, 0, 1, -1, 2]
    assert gi.sizes.tolist() == [1, 2, 1] and gi.uids == ("a", "b", "c")
    assert gi.is_padding.tolist() == [False, False, False, True, False]


@pytest.mark.parametrize("bad", [None, ["a", ""], ["a", None]])
def test_missing_or_empty_uid_is_named(bad):
    with pytest.raises(ValueError, match="uid"):
        group_index_from_uids(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_reward_names_the_rollout(value):
    rewards = torch.zeros(3, 4)
    rewards[2, 3] = value
    with pytest.raises(ValueError, match=r"rollout 2 \(uid 'u-2'\)"):
        sequence_scores(rewards, torch.ones(3, 4), uids=["u-0", "u-1", "u-2"])


def test_row_selection_helpers():
    from verl_credit.core.groups import contrast_rows, group_sum, mixed_groups, multi_rollout_rows

    uids = ["a", "a", "b", "b", "c", "pad0", "d", "d"]
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    groups = group_index_from_uids(uids)  # groups sorted by uid: a, b, c, d
    assert mixed_groups(scores > 0.5, groups).tolist() == [True, False, False, False]
    assert multi_rollout_rows(groups).tolist() == [True, True, True, True, False, False, True, True]
    assert contrast_rows(scores, groups).tolist() == [True, True, False, False, False, False, False, False]
    assert group_sum(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 0]), 3).tolist() == [4, 0, 2]
