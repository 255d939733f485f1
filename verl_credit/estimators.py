"""Built-in estimators, registered with :func:`verl_credit.register_estimator`.

ktae  -- key-token advantage estimation, see ``verl_credit.core.ktae``.
"""

from __future__ import annotations

import dataclasses

from verl_credit.batch import CreditBatch, CreditOutput, EstimatorContext
from verl_credit.core.ktae import ktae_advantages
from verl_credit.registry import register_estimator


@register_estimator("ktae")
def ktae(batch: CreditBatch, ctx: EstimatorContext) -> CreditOutput:
    """KTAE: outcome advantage plus a key-token value per (group, token id) (arXiv 2505.16826)."""
    params = ctx.config.ktae
    if params.ignore_token_ids is None:
        params = dataclasses.replace(params, ignore_token_ids=list(ctx.special_token_ids))
    res = ktae_advantages(
        batch.responses,
        batch.response_mask,
        batch.scores,
        batch.groups,
        params,
        correct_threshold=ctx.config.correct_threshold,
        norm_adv_by_std=ctx.norm_adv_by_std,
        epsilon=ctx.config.epsilon,
    )
    valid = batch.response_mask.bool() & res.mixed_groups[batch.groups.group.clamp_min(0)].unsqueeze(1)
    valid &= ~batch.groups.is_padding.unsqueeze(1)
    k_valid = res.key_token_values[valid]
    sizes = batch.groups.sizes
    metrics = {
        "ktae/mixed_groups/fraction": float(res.mixed_groups.float().mean()) if sizes.numel() else 0.0,
        "ktae/singleton_groups/count": float((sizes == 1).sum()),
        "ktae/key_value/abs_mean": float(k_valid.abs().mean()) if k_valid.numel() else 0.0,
        "ktae/key_value/positive_fraction": float((k_valid > 0).float().mean()) if k_valid.numel() else 0.0,
    }
    return CreditOutput(
        advantages=res.advantages,
        metrics=metrics,
        diagnostics={"key_token_values": res.key_token_values, "outcome_advantage": res.outcome_advantage},
    )
