"""Counterfactual importance weighting (Khandoga et al., arXiv 2602.09331).

Public API:
    WEIGHT_MODES                       -- "counterfactual", "uniform", "random", "inverted".
    WeightParams                       -- w_min, w_max, answer_weight, mode, seed, conserve_gradient.
    span_importance(scores)            -- (B, S+1) answer log-prob sums -> D, normalised I (B, S).
    control_importance(I_hat, mode, g) -- the ablation controls.
    token_weights(...)                 -- (B, T) per-token weights, vectorised.
    token_weights_loop(...)            -- the same with Python loops (reference for tests).
    token_significance(...)            -- (B, T) per-token significance for the length reward's
                                          ``counterfactual`` scorer; ``token_significance_loop`` beside it.
    STAGE_FIELDS                       -- the per-rollout fields the scoring stage writes.

Notation: B rollouts, T response positions, S = max spans per rollout. For rollout i with answer a
and reasoning r, S_i(x) = sum_t log pi(a_t | prompt, x, a_<t) under the current policy, no grad.
    scores[i, 0]   = S_i(r)                 (the unmodified reasoning)
    scores[i, k]   = S_i(r without span k)  (span k overwritten in place by a placeholder token)
    D_ik = scores[i, k] - scores[i, 0];  I_ik = -D_ik   (large I: the span is critical;
           D > 0: masking the span helps the answer, a "distractor")
    I_hat = min-max of I over the rollout's spans (all equal -> 0.5)
    w_t = w_min + I_hat_k (w_max - w_min) on tokens of span k, answer_weight on answer tokens,
          1 elsewhere;   token advantage = A_i * w_t.
    conserve_gradient (the authors' code; off by default, as in the blog's formula):
          w_t <- w_t * n_i / sum_{t valid} w_t, so each rollout's weights have mean 1 over its n_i
          valid tokens (``response_mask``): the weighting moves gradient between tokens and no
          longer scales the rollout's total. A rollout whose weights are all 1 (not scored, the
          ``uniform`` control) is unchanged; one with no valid token, or a zero weight sum, too.
Significance (``credit.length_reward.scorer=counterfactual``), in [0, 1], higher = more significant:
    s_t = I_hat_k on tokens of span k of a scored rollout, 0 on every other token: the answer
          (the target, not measured; a marker written early must not make the rest count), text
          between spans, sentences overlapping an arithmetic span, spans beyond ``max_spans``, and
          every token of a rollout the stage did not score. A token is significant only when
          masking its span was measured to matter for the answer. Already in [0, 1]; thresholded
          as it is. (On the gym's labelled task, 0 for unmeasured tokens separates causal from
          filler and side-step tokens better than 1: AUC 0.698 vs 0.556; rollouts without an
          answer hold 11% of the filler and 38% of the side-step tokens and no causal one.)
For w > 0, scaling the advantage by w is exactly the w-weighted PPO clipped (and dual-clipped)
loss: clip(rho, 1-e, 1+e) * (w A) = w * (clip(rho, 1-e, 1+e) A) and min/max commute with w > 0.
Absent spans are NaN in ``scores`` and -1 in ``spans``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from verl_credit.core.checks import is_number

__all__ = [
    "STAGE_FIELDS",
    "STAGE_PADDING",
    "WEIGHT_MODES",
    "WeightParams",
    "span_importance",
    "control_importance",
    "paint_spans",
    "token_weights",
    "token_weights_loop",
    "token_significance",
    "token_significance_loop",
]

# what the scoring stage writes per rollout: scores (S+1,) NaN absent, spans (S, 2) and answer (2,), -1 absent
STAGE_FIELDS = ("credit_cf_scores", "credit_cf_spans", "credit_cf_answer")
# the "absent" value of each: rows of different S (e.g. from two dp shards) are padded with it
STAGE_PADDING = {"credit_cf_scores": math.nan, "credit_cf_spans": -1, "credit_cf_answer": -1}

WEIGHT_MODES = ("counterfactual", "uniform", "random", "inverted")


@dataclass
class WeightParams:
    """Token weights from span importances.

    Attributes:
        mode: "counterfactual" (the method), or an ablation control: "uniform" (every weight 1:
            plain GRPO/DAPO), "random" (I_hat ~ U(0, 1), seeded), "inverted" (I_hat -> 1 - I_hat).
        w_min, w_max: weight of the least / most important span. Defaults 0.5 / 2.0.
        answer_weight: weight of the final answer's tokens. Default 1.5.
        seed: seed of the "random" control (combined with the step, so reproducible).
        conserve_gradient: rescale each rollout's weights to mean 1 over its valid tokens
            (w_t <- w_t * n / sum w), as the authors' code does ("gradient conservation", on
            there): the weighting then redistributes the gradient within a rollout instead of
            also scaling it (with the defaults, answer tokens at 1.5 and spans between 0.5 and 2.0
            usually put a rollout's mean weight above 1, so off means a larger step for weighted
            rollouts than for unscored ones). Rollouts the stage did not score
            keep weight 1 on every token, which already has mean 1. Default False: the blog's
            formula, unnormalised.
    """

    mode: str = "counterfactual"
    w_min: float = 0.5
    w_max: float = 2.0
    answer_weight: float = 1.5
    seed: int = 0
    conserve_gradient: bool = False

    def __post_init__(self):
        if self.mode not in WEIGHT_MODES:
            raise ValueError(f"credit.counterfactual.mode must be one of {WEIGHT_MODES}, got {self.mode!r}")
        for name in ("w_min", "w_max", "answer_weight"):
            value = getattr(self, name)
            if not (is_number(value) and value > 0):
                raise ValueError(f"credit.counterfactual.{name} must be > 0, got {value!r}")
        if self.w_min > self.w_max:
            raise ValueError(f"credit.counterfactual.w_min ({self.w_min}) must be <= w_max ({self.w_max})")
        if not isinstance(self.conserve_gradient, bool):
            raise ValueError(
                f"credit.counterfactual.conserve_gradient must be true or false, got {self.conserve_gradient!r}"
            )


def span_importance(scores: torch.Tensor, eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """D = S(r without span) - S(r) and the per-rollout min-max normalised importance I_hat = norm(-D).

    Shapes: scores (B, S+1) float, NaN for absent spans -> (D (B, S), I_hat (B, S)), NaN where absent.
    """
    D = scores[:, 1:] - scores[:, :1]
    valid = ~torch.isnan(D)
    importance = -D
    lo = torch.where(valid, importance, torch.full_like(importance, math.inf)).amin(dim=1, keepdim=True)
    hi = torch.where(valid, importance, torch.full_like(importance, -math.inf)).amax(dim=1, keepdim=True)
    spread = hi - lo
    flat = ~(spread > eps)
    norm = torch.where(flat, torch.full_like(importance, 0.5), (importance - lo) / torch.where(flat, 1.0, spread))
    return D, torch.where(valid, norm, torch.full_like(norm, math.nan))


def control_importance(importance: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The ablation controls applied to I_hat (NaN entries stay NaN). (B, S) -> (B, S)."""
    if mode == "counterfactual":
        return importance
    if mode == "inverted":
        return 1.0 - importance
    if mode == "random":
        rand = torch.rand(importance.shape, generator=generator, dtype=importance.dtype)
        return torch.where(torch.isnan(importance), importance, rand)
    if mode == "uniform":
        return torch.full_like(importance, math.nan)  # no span weighting at all
    raise ValueError(f"unknown weighting mode {mode!r}; expected one of {WEIGHT_MODES}")


def paint_spans(
    values: torch.Tensor, spans: torch.Tensor, answer: torch.Tensor, answer_value: float, T: int, base: float = 1.0
) -> torch.Tensor:
    """Per-token values: ``values[i, k]`` on the tokens of span k, ``answer_value`` on the answer's
    tokens, ``base`` elsewhere, for the whole batch at once.

    Spans of one rollout are disjoint (and disjoint from its answer), so a difference array
    (+v at the start, -v at the end, cumulative sum) paints every span in one pass.
    Shapes: values (B, S) (NaN = leave the span at ``base``), spans (B, S, 2) token ranges [start, end)
            (-1 absent), answer (B, 2) (-1 absent) -> FloatTensor[B, T] float64.
    """
    B = values.shape[0]
    delta = torch.zeros(B, T + 1, dtype=torch.float64)
    has = (spans[..., 0] >= 0) & ~torch.isnan(values)
    extra = torch.where(has, values.double() - base, 0.0)
    delta.scatter_add_(1, spans[..., 0].clamp(0, T).long(), extra)
    delta.scatter_add_(1, spans[..., 1].clamp(0, T).long(), -extra)
    a_extra = torch.where(answer[:, 0] >= 0, answer_value - base, 0.0).double().unsqueeze(1)
    delta.scatter_add_(1, answer[:, :1].clamp(0, T).long(), a_extra)
    delta.scatter_add_(1, answer[:, 1:].clamp(0, T).long(), -a_extra)
    return base + delta.cumsum(dim=1)[:, :T]


def token_weights(
    importance: torch.Tensor,
    spans: torch.Tensor,
    answer: torch.Tensor,
    T: int,
    params: WeightParams,
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token weights from span importances, for the whole batch at once (:func:`paint_spans`).

        w_t = w_min + I_hat_k (w_max - w_min) on span k, answer_weight on the answer, 1 elsewhere;
        with ``params.conserve_gradient``: w_t <- w_t * n_i / sum_{valid t} w_t on valid tokens
        (mean 1 per rollout; rows with no valid token or a zero sum unchanged).
    Shapes: importance (B, S) in [0, 1] or NaN, spans (B, S, 2) token ranges (-1 absent),
            answer (B, 2) (-1 absent), response_mask (B, T) (needed by ``conserve_gradient``)
            -> weights (B, T) float32.
    """
    B = importance.shape[0]
    if params.mode == "uniform":
        return torch.ones(B, T)
    span_w = params.w_min + importance.double() * (params.w_max - params.w_min)  # NaN stays NaN
    weights = paint_spans(span_w, spans, answer, params.answer_weight, T)
    if params.conserve_gradient:
        valid = _valid_mask(response_mask, B, T)
        count = valid.sum(dim=1, keepdim=True).double()
        total = torch.where(valid, weights, 0.0).sum(dim=1, keepdim=True)
        scale = torch.where(total > 0, count / torch.where(total > 0, total, 1.0), 1.0)
        weights = torch.where(valid, weights * scale, weights)
    return weights.float()


def token_weights_loop(
    importance: torch.Tensor,
    spans: torch.Tensor,
    answer: torch.Tensor,
    T: int,
    params: WeightParams,
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference for :func:`token_weights`: loops over rollouts, spans and tokens."""
    B, S = importance.shape
    w = torch.ones(B, T, dtype=torch.float64)
    if params.mode == "uniform":
        return w.float()
    valid = _valid_mask(response_mask, B, T) if params.conserve_gradient else None
    for i in range(B):
        for k in range(S):
            start, end = int(spans[i, k, 0]), int(spans[i, k, 1])
            value = float(importance[i, k])
            if start < 0 or math.isnan(value):
                continue
            for t in range(start, min(end, T)):
                w[i, t] = params.w_min + value * (params.w_max - params.w_min)
        if int(answer[i, 0]) >= 0:
            for t in range(int(answer[i, 0]), min(int(answer[i, 1]), T)):
                w[i, t] = params.answer_weight
        if valid is not None:
            positions = [t for t in range(T) if valid[i, t]]
            total = sum(float(w[i, t]) for t in positions)
            if total > 0:
                for t in positions:
                    w[i, t] = w[i, t] * len(positions) / total
    return w.float()


def _valid_mask(response_mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor:
    if response_mask is None:
        raise ValueError("credit.counterfactual.conserve_gradient needs the response_mask (the rollouts' valid tokens)")
    if tuple(response_mask.shape) != (B, T):
        raise ValueError(f"response_mask must have shape {(B, T)}, got {tuple(response_mask.shape)}")
    return response_mask.bool()


def token_significance(scores: torch.Tensor, spans: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-token significance from the scoring stage's output (the length reward's ``counterfactual`` scorer).

        s_t = I_hat_k on span k (:func:`span_importance`, the measured importance: the weighting's
              ablation controls do not apply), 0 on every other token (nothing measured) and at padding.
    Spans of one rollout are disjoint (as :func:`verl_credit.spans.find_spans` returns them).
    Shapes: scores (B, S+1) NaN absent, spans (B, S, 2) (-1 absent), response_mask [B, T]
            -> FloatTensor[B, T] float64 in [0, 1].
    """
    _, importance = span_importance(scores.double())
    T = response_mask.shape[-1]
    no_answer = torch.full((spans.shape[0], 2), -1, dtype=torch.long)
    values = paint_spans(importance, spans.long(), no_answer, 0.0, T, base=0.0)
    return torch.where(response_mask.bool(), values, torch.zeros_like(values))


def token_significance_loop(scores: torch.Tensor, spans: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Reference for :func:`token_significance`: loops over rollouts, spans and tokens."""
    B, T = response_mask.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        base = float(scores[i, 0])
        measured = []
        for k in range(spans.shape[1]):
            value = float(scores[i, k + 1])
            if int(spans[i, k, 0]) >= 0 and not math.isnan(base) and not math.isnan(value):
                measured.append((k, base - value))  # I = -D = S(r) - S(r without span k)
        lo = min((v for _, v in measured), default=0.0)
        hi = max((v for _, v in measured), default=0.0)
        for k, value in measured:
            norm = 0.5 if hi - lo <= 1e-9 else (value - lo) / (hi - lo)
            for t in range(int(spans[i, k, 0]), min(int(spans[i, k, 1]), T)):
                if response_mask[i, t]:
                    out[i, t] = norm
    return out
