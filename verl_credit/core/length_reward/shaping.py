"""The length reward's maths for one batch: normalise, count, compare with the anchor, shape.

Public API:
    minmax_normalize(scores, mask)                       (B, T) -> (B, T)
    significance_counts(normalized, mask, threshold)     (B, T) -> (B,), (B,), (B, T)
    significance_ratios(n_insig, n_sig, ref_insig, ref_sig)             -> r_ins (B,), r_sig (B,)
    length_reward_shaping(r_ins, r_sig, correct, nonempty, ...)         -> (B,)
    add_on_last_token(rm_scores, mask, shaping)          (B, T) -> (B, T)
    compute_length_reward(...)         -- everything above in one call -> LengthRewardResult.
    length_reward_metrics(result)      -- scalar metrics ``length_reward/<quantity>/<stat>``.

Notation: B rollouts (padding rows included), T response positions, s_it a scorer's score
(:mod:`.scorers`), N_ref the reference counts of the rollout's group (:mod:`.anchors`),
"correct" r_i > ``credit.correct_threshold``, lambda_dyn from :mod:`.schedule`.

    s^_it    = (s_it - min_t s_it) / (max_t s_it - min_t s_it)  over the valid tokens of rollout i
               (1 for every token when max == min; skipped when the scorer declares normalize=False)
    insignificant: s^_it < threshold;  significant: s^_it >= threshold   (valid tokens only)
    r_ins_i  = N_insig_i / N_insig_ref_g(i),  r_sig_i = N_sig_i / N_sig_ref_g(i)
               (both 0 when N_insig_ref == 0 or N_sig_ref == 0, or rollout i is empty)
    correct:   d_i = lambda_c cos(clip(r_ins_i, 0, pi/2))                                   in [0, lambda_c]
    incorrect: d_i = min(0, lambda_wn (cos(clip(r_ins_i, 0, pi/2)) - 1) + lambda_dyn r_sig_i - lambda_we)  <= 0
    empty rollouts and padding rows: d_i = 0
    rm_scores'[i, last valid t] = rm_scores[i, last valid t] + d_i
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from verl_credit.core.groups import GroupIndex
from verl_credit.core.length_reward.anchors import (
    PromptAnchors,
    first_seen_reference_counts,
    group_reference_counts,
)
from verl_credit.core.length_reward.config import LengthRewardConfig

__all__ = [
    "HALF_PI",
    "LengthRewardResult",
    "add_on_last_token",
    "compute_length_reward",
    "length_reward_metrics",
    "length_reward_shaping",
    "minmax_normalize",
    "significance_counts",
    "significance_ratios",
]

HALF_PI = math.pi / 2


def minmax_normalize(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-response min-max normalisation over the valid tokens.

        s^_it = (s_it - min_t s_it) / (max_t s_it - min_t s_it),   s^_it = 1 when max == min

    (constant scores count as significant, as the authors' ``normalize_probs``.)
    Shapes: scores FloatTensor[B, T] (finite at valid positions), response_mask [B, T]
            -> FloatTensor[B, T] float64 in [0, 1], 0 at masked positions.
    """
    valid = response_mask.bool()
    s = scores.to(torch.float64)
    lo = torch.where(valid, s, torch.full_like(s, math.inf)).amin(dim=-1, keepdim=True)
    hi = torch.where(valid, s, torch.full_like(s, -math.inf)).amax(dim=-1, keepdim=True)
    span = hi - lo
    flat = ~(span > 0)  # also rows without a valid token (inf - inf = nan)
    norm = torch.where(flat, torch.ones_like(s), (s - lo) / torch.where(flat, torch.ones_like(span), span))
    return torch.where(valid, norm.clamp(0.0, 1.0), torch.zeros_like(norm))


def significance_counts(
    normalized: torch.Tensor, response_mask: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insignificant (s^ < threshold) and significant (s^ >= threshold) valid tokens per rollout.

    Shapes: normalized [B, T], response_mask [B, T]
            -> (N_insig FloatTensor[B] float64, N_sig FloatTensor[B] float64, insignificant BoolTensor[B, T]).
    """
    valid = response_mask.bool()
    insignificant = valid & (normalized < threshold)
    significant = valid & ~insignificant
    return insignificant.sum(-1).double(), significant.sum(-1).double(), insignificant


def significance_ratios(
    n_insig: torch.Tensor, n_sig: torch.Tensor, ref_insig: torch.Tensor, ref_sig: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_ins = N_insig / N_insig_ref and r_sig = N_sig / N_sig_ref.

    Both are 0 for a rollout whose reference has N_insig_ref == 0 or N_sig_ref == 0 (as the
    authors' code, which sets both ratios to 0 unless both reference counts are positive).
    Empty rollouts have N = 0, hence r = 0. Shapes: all (B,) -> ((B,), (B,)) float64.
    """
    ok = (ref_insig > 0) & (ref_sig > 0)
    r_ins = torch.where(ok, n_insig.double() / torch.where(ok, ref_insig, 1.0), 0.0)
    r_sig = torch.where(ok, n_sig.double() / torch.where(ok, ref_sig, 1.0), 0.0)
    return r_ins.double(), r_sig.double()


def length_reward_shaping(
    r_ins: torch.Tensor,
    r_sig: torch.Tensor,
    correct: torch.Tensor,
    nonempty: torch.Tensor,
    *,
    lambda_c: float,
    lambda_wn: float,
    lambda_we: float,
    lambda_dyn: float,
) -> torch.Tensor:
    """The reward change d_i of each rollout.

        correct:   d = lambda_c cos(clip(r_ins, 0, pi/2))
        incorrect: d = min(0, lambda_wn (cos(clip(r_ins, 0, pi/2)) - 1) + lambda_dyn r_sig - lambda_we)
        rollouts with nonempty False (empty responses, padding rows): d = 0

    Shapes: r_ins, r_sig FloatTensor[B]; correct, nonempty BoolTensor[B] -> FloatTensor[B] float64.
    """
    cos = torch.cos(r_ins.double().clamp(0.0, HALF_PI))
    bonus = lambda_c * cos
    penalty = (lambda_wn * (cos - 1.0) + lambda_dyn * r_sig.double() - lambda_we).clamp_max(0.0)
    d = torch.where(correct, bonus, penalty)
    return torch.where(nonempty, d, torch.zeros_like(d))


def add_on_last_token(rm_scores: torch.Tensor, response_mask: torch.Tensor, shaping: torch.Tensor) -> torch.Tensor:
    """rm_scores with d_i added on the last valid token of rollout i (where verl puts the outcome
    reward; for a truncated response that is position T-1). Rows without a valid token unchanged.

    Shapes: rm_scores [B, T], response_mask [B, T], shaping [B] -> [B, T] (dtype of rm_scores).
    """
    valid = response_mask.bool()
    T = valid.shape[-1]
    positions = torch.arange(T).expand_as(valid)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=-1)  # (B,), -1 if empty
    add = torch.zeros(rm_scores.shape, dtype=torch.float64)
    rows = (last >= 0).nonzero(as_tuple=True)[0]
    add[rows, last[rows]] = shaping[rows].double()
    return (rm_scores.double() + add).to(rm_scores.dtype)


@dataclass(frozen=True)
class LengthRewardResult:
    """Everything :func:`compute_length_reward` computed (B rows, T positions).

    normalized [B, T] float64 (s^, 0 at masked positions); insignificant [B, T] bool;
    n_insig, n_sig, ref_insig, ref_sig, r_ins, r_sig, shaping [B] float64; lengths [B] float64;
    correct, nonempty, real [B] bool (real = not a padding row); outcome [B] float64 (raw r_i);
    shaped_rm_scores [B, T] (dtype of rm_scores); lambda_dyn float; anchor: "first_seen" or "group";
    new_anchors: prompts anchored by this call (first_seen).
    """

    normalized: torch.Tensor
    insignificant: torch.Tensor
    n_insig: torch.Tensor
    n_sig: torch.Tensor
    ref_insig: torch.Tensor
    ref_sig: torch.Tensor
    r_ins: torch.Tensor
    r_sig: torch.Tensor
    shaping: torch.Tensor
    lengths: torch.Tensor
    correct: torch.Tensor
    nonempty: torch.Tensor
    real: torch.Tensor
    outcome: torch.Tensor
    shaped_rm_scores: torch.Tensor
    lambda_dyn: float
    anchor: str = "group"
    new_anchors: int = 0


def compute_length_reward(
    significance: torch.Tensor,
    rm_scores: torch.Tensor,
    response_mask: torch.Tensor,
    groups: GroupIndex,
    config: LengthRewardConfig,
    lambda_dyn: float,
    *,
    correct_threshold: float = 0.0,
    normalize: bool = True,
    anchors: PromptAnchors | None = None,
    prompt_keys: Sequence[str] | None = None,
) -> LengthRewardResult:
    """The whole shaping for one batch, from raw significance scores to shaped ``rm_scores``.

    significance: FloatTensor[B, T], a scorer's output (see :func:`run_scorer`).
    rm_scores: FloatTensor[B, T], verl's outcome reward on the last valid token (checked finite).
    normalize: min-max normalise ``significance`` per response (the scorer's declaration).
    anchors, prompt_keys: with ``config.anchor == "first_seen"``, the run's anchor store (updated in
        place) and B prompt keys (:func:`prompt_keys`). None: a fresh store (every prompt seen for the
        first time) and the uid as the key, e.g. for a one-off batch.
    Shapes: [B, T] inputs, groups.group [B] -> LengthRewardResult.
    """
    if not (significance.shape == rm_scores.shape == response_mask.shape):
        raise ValueError(
            f"significance {tuple(significance.shape)}, rm_scores {tuple(rm_scores.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must all be (B, T)"
        )
    if not torch.isfinite(rm_scores).all():
        row = int((~torch.isfinite(rm_scores).all(-1)).nonzero()[0])
        raise ValueError(f"rm_scores of rollout {row} is not finite: check the reward function's output")
    valid = response_mask.bool()
    bad = valid & ~torch.isfinite(significance)
    if bad.any():
        row, pos = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"significance score of rollout {row} at response position {pos} is not finite")
    real = groups.group >= 0
    lengths = valid.sum(-1).double()
    nonempty = real & (lengths > 0)
    outcome = rm_scores.double().sum(-1)
    correct = outcome > correct_threshold
    norm = minmax_normalize(significance, response_mask) if normalize else significance.double() * valid
    n_insig, n_sig, insignificant = significance_counts(norm, response_mask, config.threshold)
    new_anchors = 0
    if config.anchor == "first_seen":
        anchors = PromptAnchors(config.anchor_capacity) if anchors is None else anchors
        keys = prompt_keys
        if keys is None:  # one-off batch: each group its own prompt
            keys = [groups.uids[i] if i >= 0 else "" for i in groups.group.tolist()]
        ref_ins, ref_sig, new = first_seen_reference_counts(n_insig, n_sig, nonempty, groups, keys, anchors)
        new_anchors = int(new.sum())
    else:
        ref_ins, ref_sig = group_reference_counts(n_insig, n_sig, correct, nonempty, groups)
    r_ins, r_sig = significance_ratios(n_insig, n_sig, ref_ins, ref_sig)
    shaping = length_reward_shaping(
        r_ins,
        r_sig,
        correct,
        nonempty,
        lambda_c=config.lambda_c,
        lambda_wn=config.lambda_wn,
        lambda_we=config.lambda_we,
        lambda_dyn=lambda_dyn,
    )
    return LengthRewardResult(
        normalized=norm,
        insignificant=insignificant,
        n_insig=n_insig,
        n_sig=n_sig,
        ref_insig=ref_ins,
        ref_sig=ref_sig,
        r_ins=r_ins,
        r_sig=r_sig,
        shaping=shaping,
        lengths=lengths,
        correct=correct,
        nonempty=nonempty,
        real=real,
        outcome=outcome,
        shaped_rm_scores=add_on_last_token(rm_scores, response_mask, shaping),
        lambda_dyn=float(lambda_dyn),
        anchor=config.anchor,
        new_anchors=new_anchors,
    )


def length_reward_metrics(result: LengthRewardResult) -> dict[str, float]:
    """Scalar metrics named ``length_reward/<quantity>/<stat>`` (no "min"/"max" in any name).

    Token counts and ratios are means over the non-empty real rollouts; the shaping means are over
    correct / incorrect non-empty rollouts and are left out when there is none.
    """
    ne = result.nonempty
    out = {
        "length_reward/lambda_dyn/value": result.lambda_dyn,
        "length_reward/empty_responses/count": float((result.real & ~ne).sum()),
        "length_reward/raw_score/mean": _mean(result.outcome, result.real),
        "length_reward/shaped_score/mean": _mean(result.outcome + result.shaping, result.real),
    }
    if result.anchor == "first_seen":
        out["length_reward/anchor_new_prompts/count"] = float(result.new_anchors)
    if ne.any():
        length = result.lengths.clamp_min(1)
        out.update(
            {
                "length_reward/insignificant_tokens/mean": _mean(result.n_insig, ne),
                "length_reward/significant_tokens/mean": _mean(result.n_sig, ne),
                "length_reward/insignificant_ratio/mean": _mean(result.n_insig / length, ne),
                "length_reward/significant_ratio/mean": _mean(result.n_sig / length, ne),
                "length_reward/r_ins/mean": _mean(result.r_ins, ne),
                "length_reward/r_sig/mean": _mean(result.r_sig, ne),
                "length_reward/zero_reference/fraction": _mean(
                    ((result.ref_insig <= 0) | (result.ref_sig <= 0)).double(), ne
                ),
            }
        )
    for name, rows in (("shaping_correct", ne & result.correct), ("shaping_incorrect", ne & ~result.correct)):
        if rows.any():
            out[f"length_reward/{name}/mean"] = _mean(result.shaping, rows)
    return out


def _mean(values: torch.Tensor, rows: torch.Tensor) -> float:
    return float(values[rows].double().mean()) if rows.any() else 0.0
