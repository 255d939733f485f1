"""Variance-weighted reward: DRO's R3 (Xu et al., arXiv 2506.13351), vectorised over groups.

Public API:
    VarianceParams                     -- options (the ``credit.variance`` block).
    R3Result                           -- sigma (G, J), weights (G, J), R3 (B,), contrast (G,), shaped rewards (B,).
    r3_rewards(logprobs, mask, scores, groups, params) -> R3Result
    r3_rewards_loop(...)               -- the same with a Python loop per group (reference for tests).

Notation: group g of N rollouts shares one reference answer y of J tokens. Rollout i's reasoning
c_i (its own answer removed) is followed by y, teacher-forced:
    l_ij = log pi(y_j | q, c_i, y_<j)                         (logprobs[i, j], no grad)
    sigma_j = std_i l_ij over the group (population std)      reasoning-reflective tokens: high sigma
    w_j = sigma_j / mean_j sigma_j            ("linear", default: the paper gives no form; our choice)
        = 1[sigma_j among the top ceil(frac J)]   ("top_fraction")
    R3_i = sum_j w_j l_ij / sum_j w_j
    r'_i = r_i + r3_coef * zscore_g(R3)_i,  zscore = (R3 - mean_g) / (std_g + 1e-6), std unbiased.
A group whose sigma is 0 everywhere (identical rollouts, or one rollout) has no contrast: r' = r.
Unlike a binary reward, r' still separates rollouts in all-correct or all-wrong groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from verl_credit.core.checks import is_number
from verl_credit.core.groups import GroupIndex, group_sum

__all__ = ["VarianceParams", "R3Result", "r3_rewards", "r3_rewards_loop", "WEIGHTINGS"]

WEIGHTINGS = ("linear", "top_fraction")


@dataclass
class VarianceParams:
    """Options of the variance-weighted reward (``algorithm.adv_estimator=variance_weighted``).

    Attributes:
        weighting: "linear" (w = sigma / mean sigma, default) or "top_fraction" (1 on the
            ``frac`` of reference tokens with the largest sigma, else 0).
        frac: share of reference tokens kept by "top_fraction", in (0, 1]. Default 0.2.
        r3_coef: weight of the group z-scored R3 added to the verifiable reward. Default 0.5.
        answer_template: how the reference answer (``reward_model.ground_truth``) is written
            after the reasoning; must hold ``{answer}``. Default "#### {answer}".
    """

    weighting: str = "linear"
    frac: float = 0.2
    r3_coef: float = 0.5
    answer_template: str = "#### {answer}"

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"credit.variance.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not (is_number(self.frac) and 0 < self.frac <= 1):
            raise ValueError(f"credit.variance.frac must lie in (0, 1], got {self.frac!r}")
        if not (is_number(self.r3_coef) and self.r3_coef >= 0):
            raise ValueError(f"credit.variance.r3_coef must be a finite number >= 0, got {self.r3_coef!r}")
        if "{answer}" not in self.answer_template:
            raise ValueError("credit.variance.answer_template must contain '{answer}'")


@dataclass
class R3Result:
    """sigma, weights: FloatTensor[G, J] (0 at padding); r3: FloatTensor[B] (0 for rows without a
    reference and in groups without contrast); contrast: BoolTensor[G]; shaped: FloatTensor[B] r'."""

    sigma: torch.Tensor
    weights: torch.Tensor
    r3: torch.Tensor
    contrast: torch.Tensor
    shaped: torch.Tensor


def r3_rewards(
    logprobs: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, groups: GroupIndex, params: VarianceParams
) -> R3Result:
    """R3 and the shaped reward for every group at once.

    Shapes: logprobs (B, J) float, mask (B, J) (1 on reference tokens; rows of a group share
    it; all-zero for rows without a reference, e.g. padding), scores (B,) -> R3Result.
    Raises ValueError when rows of one group have different reference masks.
    """
    G = groups.num_groups
    real = ~groups.is_padding & mask.bool().any(dim=1)
    g = groups.group.clamp_min(0)
    lp, m = logprobs.double() * mask, mask.double()
    rm = real.double().unsqueeze(1)
    n = group_sum(rm.squeeze(1), g, G)  # rollouts with a reference, per group
    # every rollout of a group must carry the group's reference: compare with the group's first rollout
    rows = torch.arange(len(g))
    first = torch.full((G,), len(g), dtype=torch.long).scatter_reduce_(0, g[real], rows[real], reduce="amin")
    differs = real & (m != m[first.clamp(max=max(len(g) - 1, 0))[g]]).any(dim=1)
    if bool(differs.any()):
        row = int(differs.nonzero()[0])
        raise ValueError(f"rollout {row}: its reference-answer mask differs from the rest of its group")
    m_g = torch.where(
        (n > 0).unsqueeze(1), m[first.clamp(max=max(len(g) - 1, 0))], torch.zeros(G, m.shape[1], dtype=m.dtype)
    )
    mean = group_sum(lp * rm, g, G) / n.clamp_min(1).unsqueeze(1)
    var = group_sum(((lp - mean[g]) ** 2) * m * rm, g, G) / n.clamp_min(1).unsqueeze(1)
    sigma = var.clamp_min(0).sqrt() * m_g
    contrast = (sigma > 1e-12).any(dim=1) & (n > 1)
    if params.weighting == "linear":
        mean_sigma = sigma.sum(1, keepdim=True) / m_g.sum(1, keepdim=True).clamp_min(1)
        weights = torch.where(contrast.unsqueeze(1), sigma / mean_sigma.clamp_min(1e-300), torch.zeros_like(sigma))
    else:
        k = torch.ceil(params.frac * m_g.sum(1)).long().clamp_min(1)
        order = torch.where(m_g > 0, sigma, torch.full_like(sigma, -1.0)).argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(sigma.shape[1]).expand_as(order))
        weights = ((rank < k.unsqueeze(1)) & (m_g > 0) & contrast.unsqueeze(1)).double()
    w_row = weights[g] * m
    r3 = torch.where(
        real, (w_row * lp).sum(1) / w_row.sum(1).clamp_min(1e-300), torch.zeros(len(g), dtype=torch.float64)
    )
    # group z-score of R3 (unbiased std, as the GRPO advantage), only where the group has contrast
    r3_mean = group_sum(r3 * real, g, G) / n.clamp_min(1)
    dev = (r3 - r3_mean[g]) * real
    r3_std = (group_sum(dev * dev, g, G) / (n - 1).clamp_min(1)).sqrt()
    z = dev / (r3_std[g] + 1e-6)
    use = real & contrast[g]
    shaped = scores.double() + torch.where(use, params.r3_coef * z, torch.zeros_like(z))
    return R3Result(
        sigma=sigma.float(), weights=weights.float(), r3=r3.float(), contrast=contrast, shaped=shaped.float()
    )


def r3_rewards_loop(logprobs, mask, scores, uids, params: VarianceParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: (R3 (B,), shaped rewards (B,)) with a loop over groups and plain tensor ops."""
    B = len(uids)
    r3, shaped = torch.zeros(B, dtype=torch.float64), scores.double().clone()
    members: dict[str, list[int]] = {}
    for i, u in enumerate(uids):
        if not u.startswith("pad") and bool(mask[i].any()):
            members.setdefault(u, []).append(i)
    for rows in members.values():
        keep = mask[rows[0]].bool()
        L = logprobs[rows][:, keep].double()  # (N, J)
        sigma = L.std(dim=0, unbiased=False)
        if len(rows) < 2 or not bool((sigma > 1e-12).any()):
            continue  # no contrast: R3 = 0, r' = r
        if params.weighting == "linear":
            w = sigma / sigma.mean()
        else:
            k = max(1, math.ceil(params.frac * len(sigma)))
            w = torch.zeros_like(sigma)
            w[torch.argsort(sigma, descending=True, stable=True)[:k]] = 1.0
        vals = (L * w).sum(dim=1) / w.sum()
        r3[rows] = vals
        z = (vals - vals.mean()) / (vals.std() + 1e-6)
        shaped[rows] = scores[rows].double() + params.r3_coef * z
    return r3.float(), shaped.float()
