"""Rollout groups and the group-relative outcome advantage.

Public API:
    GroupIndex                      -- dataclass: dense group id per rollout, sizes, padding flags.
    group_index_from_uids(uids)     -- list[str] (B,) -> GroupIndex.
    sequence_scores(rewards, mask)  -- (B, T) -> (B,), validated (no NaN / inf).
    group_outcome_advantage(...)    -- (B,) -> (B,), GRPO z-score or Dr.GRPO centring.
    group_outcome_advantage_loop    -- the same, a per-group Python loop (reference for tests).

Notation: B rollouts, T response positions, G groups. A group is every rollout that shares a
verl ``uid`` (the ``n`` samples of one prompt). Rows whose uid starts with ``pad`` are verl's
synthetic padding rows (``upsample_batch_to_divisible_size``): they belong to no group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "PADDING_UID_PREFIX",
    "GroupIndex",
    "group_index_from_uids",
    "sequence_scores",
    "group_outcome_advantage",
    "group_sum",
    "mixed_groups",
    "multi_rollout_rows",
    "contrast_rows",
    "group_outcome_advantage_loop",
]

PADDING_UID_PREFIX = "pad"


@dataclass(frozen=True)
class GroupIndex:
    """Dense group ids of a batch.

    Attributes:
        group: LongTensor[B]; group id in [0, G) for real rollouts, -1 for padding rows.
        sizes: LongTensor[G]; rollouts per group.
        uids: tuple of G uid strings, ``uids[g]`` names group g.
    """

    group: torch.Tensor
    sizes: torch.Tensor
    uids: tuple[str, ...]

    @property
    def num_groups(self) -> int:
        return len(self.uids)

    @property
    def is_padding(self) -> torch.Tensor:
        """BoolTensor[B]: True for verl's synthetic padding rows."""
        return self.group < 0


def group_index_from_uids(uids: Sequence[str] | np.ndarray | None) -> GroupIndex:
    """Map per-rollout uids to dense group ids; ``pad*`` uids map to -1.

    Shapes: uids (B,) -> group (B,), sizes (G,).
    Raises ValueError when uids is missing or holds an empty / non-string id.
    """
    if uids is None:
        raise ValueError("batch field 'uid' is missing: every rollout needs the uid of its prompt group")
    uids = [u.decode() if isinstance(u, bytes) else u for u in list(uids)]
    for row, uid in enumerate(uids):
        if not isinstance(uid, str) or uid == "":
            raise ValueError(f"batch field 'uid' of rollout {row} is {uid!r}: expected a non-empty string")
    arr = np.asarray(uids, dtype=object)
    is_pad = np.fromiter((u.startswith(PADDING_UID_PREFIX) for u in uids), dtype=bool, count=len(uids))
    group = np.full(len(uids), -1, dtype=np.int64)
    names: tuple[str, ...] = ()
    if (~is_pad).any():
        uniq, inverse = np.unique(arr[~is_pad].astype(str), return_inverse=True)
        group[~is_pad] = inverse
        names = tuple(str(u) for u in uniq)
    group_t = torch.from_numpy(group)
    sizes = torch.bincount(group_t[group_t >= 0], minlength=len(names))
    return GroupIndex(group=group_t, sizes=sizes, uids=names)


def group_sum(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-group sums: out[g] = sum_{i: group[i] = g} values[i] (rows already restricted to real ones).

    Shapes: values (N, ...), group LongTensor[N] in [0, num_groups) -> (num_groups, ...), values' dtype.
    """
    return torch.zeros((num_groups, *values.shape[1:]), dtype=values.dtype).index_add_(0, group, values)


def mixed_groups(correct: torch.Tensor, groups: GroupIndex) -> torch.Tensor:
    """BoolTensor[G]: groups holding both correct and wrong rollouts. correct: BoolTensor[B]."""
    real = groups.group >= 0
    n_correct = group_sum(correct[real].long(), groups.group[real], groups.num_groups)
    return (n_correct > 0) & (n_correct < groups.sizes)


def multi_rollout_rows(groups: GroupIndex) -> torch.Tensor:
    """BoolTensor[B]: real rollouts of groups with at least two (the ones a group statistic can use)."""
    return (groups.group >= 0) & (groups.sizes[groups.group.clamp_min(0)] > 1)


def contrast_rows(scores: torch.Tensor, groups: GroupIndex) -> torch.Tensor:
    """BoolTensor[B]: real rollouts of groups whose outcome advantages are not all zero (rows any
    group-relative estimator gives credit to; the counterfactual stage scores only these). scores: (B,)."""
    real = groups.group >= 0
    z = group_outcome_advantage(scores, groups)
    active = group_sum((z[real] != 0).long(), groups.group[real], groups.num_groups) > 0
    return real & active[groups.group.clamp_min(0)]


def sequence_scores(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, uids=None) -> torch.Tensor:
    """Outcome reward of each rollout: r_i = sum_t rewards[i, t] (verl puts it on the last token).

    Shapes: token_level_rewards (B, T), response_mask (B, T) -> (B,) float64.
    Raises ValueError naming the first rollout whose reward is NaN or infinite.
    """
    if token_level_rewards.shape != response_mask.shape:
        raise ValueError(
            f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must have the same shape (B, T)"
        )
    bad = ~torch.isfinite(token_level_rewards).all(dim=-1)
    if bad.any():
        row = int(bad.nonzero()[0])
        who = f" (uid {uids[row]!r})" if uids is not None else ""
        raise ValueError(
            f"reward of rollout {row}{who} is not finite ({token_level_rewards[row].sum().item()}): "
            "check the reward function's output for this rollout"
        )
    return token_level_rewards.double().sum(dim=-1)


def group_outcome_advantage(
    scores: torch.Tensor, groups: GroupIndex, norm_by_std: bool = True, epsilon: float = 1e-6
) -> torch.Tensor:
    """Group-relative outcome advantage, vectorised over all groups.

        z_i = (r_i - mean_g r) / (std_g r + epsilon)   if norm_by_std   (GRPO)
        z_i =  r_i - mean_g r                          otherwise        (Dr.GRPO)

    std is the unbiased sample std (as ``torch.std`` in verl's ``compute_grpo_outcome_advantage``).
    Groups of one and padding rows get z = 0. (verl gives a singleton group z = r / (1 + eps);
    a group of one carries no relative signal, so verl_credit returns 0 and counts it in metrics.)

    Shapes: scores (B,), groups.group (B,) -> (B,) float32.
    """
    g = groups.group
    real = g >= 0
    z = torch.zeros(scores.shape[0], dtype=torch.float64)
    if not real.any():
        return z.float()
    gi, s = g[real], scores[real].double()
    n = groups.sizes.double()
    mean = group_sum(s, gi, groups.num_groups) / n.clamp_min(1)
    dev = s - mean[gi]
    sq = group_sum(dev * dev, gi, groups.num_groups)
    std = (sq / (n - 1).clamp_min(1)).sqrt()
    out = dev / (std[gi] + epsilon) if norm_by_std else dev
    out = torch.where(groups.sizes[gi] > 1, out, torch.zeros_like(out))
    z[real] = out
    return z.float()


def group_outcome_advantage_loop(
    scores: torch.Tensor, uids: Sequence[str], norm_by_std: bool = True, epsilon: float = 1e-6
) -> torch.Tensor:
    """Reference loop for :func:`group_outcome_advantage` (one Python iteration per group)."""
    z = torch.zeros(len(uids), dtype=torch.float64)
    members: dict[str, list[int]] = {}
    for i, u in enumerate(uids):
        if not u.startswith(PADDING_UID_PREFIX):
            members.setdefault(u, []).append(i)
    for rows in members.values():
        if len(rows) < 2:
            continue
        vals = scores[rows].double()
        dev = vals - vals.mean()
        z[rows] = dev / (vals.std() + epsilon) if norm_by_std else dev
    return z.float()
