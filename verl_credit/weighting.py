"""Counterfactual token weighting applied on top of any estimator's advantages (no verl imports).

    STAGE_FIELDS                         -- per-row fields the counterfactual stage writes.
    weighting_active(name, config)       -- does this run weight tokens?
    apply_counterfactual_weights(...)    -- advantages (B, T) * weights (B, T), plus metrics.

The stage (actor worker, ``integration/worker.py``; or ``scoring.score_spans`` on CPU) writes, per
rollout: ``credit_cf_scores`` FloatTensor[S+1] (NaN absent), ``credit_cf_spans`` LongTensor[S, 2]
and ``credit_cf_answer`` LongTensor[2] (-1 absent). Weights follow ``core.counterfactual``.
"""

from __future__ import annotations

import torch

from verl_credit.batch import CreditBatch, CreditOutput
from verl_credit.core.counterfactual import STAGE_FIELDS, control_importance, span_importance, token_weights
from verl_credit.scoring import CounterfactualConfig

__all__ = ["STAGE_FIELDS", "weighting_active", "needs_scoring_stage", "apply_counterfactual_weights"]


def weighting_active(estimator: str, token_weighting: str) -> bool:
    """Token weighting runs for ``adv_estimator=counterfactual`` or ``credit.token_weighting=counterfactual``."""
    return estimator == "counterfactual" or token_weighting == "counterfactual"


def needs_scoring_stage(estimator: str, token_weighting: str, cf: CounterfactualConfig) -> bool:
    """The extra forward stage runs only when weights depend on spans ("uniform" needs none)."""
    return weighting_active(estimator, token_weighting) and cf.mode != "uniform"


def apply_counterfactual_weights(
    out: CreditOutput, batch: CreditBatch, cf: CounterfactualConfig, global_step: int = 0
) -> CreditOutput:
    """Multiply ``out.advantages`` by the token weights; record weights and metrics.

    Rollouts the stage did not score (skipped groups, no answer) keep weight 1 (also under
    ``cf.conserve_gradient``, which rescales each scored rollout to mean 1 over its valid tokens).
    Shapes: out.advantages (B, T); batch.fields[STAGE_FIELDS] (B, S+1), (B, S, 2), (B, 2).
    """
    B, T = batch.responses.shape
    if cf.mode == "uniform":
        weights = torch.ones(B, T)
        metrics = {}
    else:
        missing = [f for f in STAGE_FIELDS if f not in batch.fields]
        if missing:
            raise ValueError(f"counterfactual weighting needs field {missing[0]!r} from the scoring stage")
        scores = batch.fields["credit_cf_scores"].float()
        spans, answer = batch.fields["credit_cf_spans"].long(), batch.fields["credit_cf_answer"].long()
        D, importance = span_importance(scores)
        generator = torch.Generator().manual_seed(int(cf.seed) * 1_000_003 + int(global_step))
        importance = control_importance(importance, cf.mode, generator)
        scored = ~torch.isnan(scores[:, 0])
        answer = torch.where(scored.unsqueeze(1), answer, torch.full_like(answer, -1))  # unscored: weight 1
        weights = token_weights(importance, spans, answer, T, cf, batch.response_mask)
        real = ~batch.groups.is_padding
        valid_spans = ~torch.isnan(D) & real.unsqueeze(1)
        per_rollout = (spans[..., 0] >= 0).sum(1).float()[real & scored]
        w_valid = weights[batch.response_mask.bool() & real.unsqueeze(1)]
        metrics = {
            "counterfactual/distractor_spans/fraction": float((D[valid_spans] > 0).float().mean())
            if valid_spans.any()
            else 0.0,
            "counterfactual/spans_per_rollout/mean": float(per_rollout.mean()) if per_rollout.numel() else 0.0,
            "counterfactual/weight/mean": float(w_valid.mean()) if w_valid.numel() else 1.0,
            "counterfactual/weight/std": float(w_valid.std()) if w_valid.numel() > 1 else 0.0,
            "counterfactual/rollouts_weighted/count": float((scored & real).sum()),
        }
    out.advantages = out.advantages * weights
    out.returns = out.advantages if out.returns is None else out.returns * weights
    out.token_weights = weights
    out.metrics.update(metrics)
    return out
