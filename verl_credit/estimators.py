"""Built-in estimators, registered with :func:`verl_credit.register_estimator`.

ktae  -- key-token advantage estimation, see ``verl_credit.core.ktae``.
"""

from __future__ import annotations

import math

import torch

from verl_credit.batch import CreditBatch, CreditOutput, EstimatorContext
from verl_credit.core.counterfactual import STAGE_FIELDS as CF_STAGE_FIELDS
from verl_credit.core.groups import group_outcome_advantage, group_sum
from verl_credit.core.ktae import ktae_advantages
from verl_credit.core.variance import r3_rewards
from verl_credit.registry import EstimatorSpec, register_estimator


def grpo_outcome(batch: CreditBatch, ctx: EstimatorContext) -> CreditOutput:
    """GRPO / Dr.GRPO outcome advantage at every valid token (same numbers as verl's grpo)."""
    z = group_outcome_advantage(batch.scores, batch.groups, ctx.norm_adv_by_std, ctx.config.epsilon)
    return CreditOutput(advantages=z.unsqueeze(1) * batch.response_mask.float())


GRPO_SPEC = EstimatorSpec(name="grpo", fn=grpo_outcome, description="verl's GRPO outcome advantage")
REFERENCE_FIELDS = ("credit_ref_logprobs", "credit_ref_mask")


@register_estimator("counterfactual")
def counterfactual(batch: CreditBatch, ctx: EstimatorContext) -> CreditOutput:
    """Counterfactual importance weighting over GRPO (arXiv 2602.09331); weights applied by the trainer.

    Returns the GRPO advantages; the trainer then multiplies them by the token weights
    (``verl_credit.weighting.apply_counterfactual_weights``) computed from the scoring stage's
    fields. Without those fields (and ``credit.counterfactual.mode`` other than ``uniform``) this
    raises instead of passing plain GRPO off as the method.
    """
    if ctx.config.counterfactual.mode != "uniform":
        missing = [f for f in CF_STAGE_FIELDS if f not in batch.fields]
        if missing:
            raise ValueError(
                f"estimator 'counterfactual' needs the scoring stage's fields {', '.join(CF_STAGE_FIELDS)} in "
                f"batch.fields (missing {missing[0]!r}). The plugin trainer computes them; from Python, run "
                "verl_credit.scoring.score_spans and put its scores, spans and answer there, then apply the weights "
                "with verl_credit.weighting.apply_counterfactual_weights (docs/python_api.md)."
            )
    return grpo_outcome(batch, ctx)


@register_estimator("ktae")
def ktae(batch: CreditBatch, ctx: EstimatorContext) -> CreditOutput:
    """KTAE: outcome advantage plus a key-token value per (group, token id) (arXiv 2505.16826)."""
    params = ctx.config.ktae.with_special_ids(ctx.special_token_ids)
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


@register_estimator("variance_weighted", stage=("reference",))
def variance_weighted(batch: CreditBatch, ctx: EstimatorContext) -> CreditOutput:
    """DRO's R3: reasoning-reflective reference tokens weight a reward added before GRPO (arXiv 2506.13351)."""
    missing = [f for f in REFERENCE_FIELDS if f not in batch.fields]
    if missing:
        raise ValueError(f"variance_weighted needs field {missing[0]!r} from the scoring stage")
    logprobs, mask = batch.fields["credit_ref_logprobs"].float(), batch.fields["credit_ref_mask"].long()
    res = r3_rewards(logprobs, mask, batch.scores, batch.groups, ctx.config.variance, ctx.config.correct_threshold)
    z = group_outcome_advantage(res.shaped.double(), batch.groups, ctx.norm_adv_by_std, ctx.config.epsilon)
    return CreditOutput(
        advantages=z.unsqueeze(1) * batch.response_mask.float(),
        metrics=_variance_metrics(res, batch, ctx.config.correct_threshold),
        diagnostics={"r3": res.r3, "shaped_reward": res.shaped, "reference_weights": res.weights, "sigma": res.sigma},
    )


def _variance_metrics(res, batch: CreditBatch, threshold: float) -> dict[str, float]:
    """Mean sigma, share of reference tokens holding 80% of the weight, R3 spread where rewards are all
    equal, and the share of mixed groups where a wrong rollout's r' reaches a correct one's."""
    g = batch.groups.group
    real = g >= 0
    contrast = res.contrast
    metrics = {"variance/groups_with_contrast/fraction": float(contrast.float().mean()) if contrast.numel() else 0.0}
    G = batch.groups.num_groups
    correct = batch.scores > threshold
    lowest_correct = torch.full((G,), math.inf, dtype=torch.float64).scatter_reduce_(
        0, g[real & correct], res.shaped.double()[real & correct], reduce="amin"
    )
    highest_wrong = torch.full((G,), -math.inf, dtype=torch.float64).scatter_reduce_(
        0, g[real & ~correct], res.shaped.double()[real & ~correct], reduce="amax"
    )
    mixed = torch.isfinite(lowest_correct) & torch.isfinite(highest_wrong)
    crossed = mixed & (highest_wrong >= lowest_correct)
    metrics["variance/mixed_groups_crossed/fraction"] = float(crossed.sum() / mixed.sum()) if mixed.any() else 0.0
    if contrast.any():
        w, sigma = res.weights[contrast], res.sigma[contrast]
        ref_len = (sigma > 0).sum(1).clamp_min(1)
        sorted_w = w.sort(dim=1, descending=True).values
        share = sorted_w.cumsum(1) / sorted_w.sum(1, keepdim=True).clamp_min(1e-12)
        needed = (share < 0.8).sum(1) + 1
        metrics["variance/tokens_for_80pct_weight/fraction"] = float((needed / ref_len).clamp(max=1).mean())
        metrics["variance/sigma/mean"] = float(sigma.sum() / (sigma > 0).sum().clamp_min(1))
    G, gr = batch.groups.num_groups, g[real]
    sizes = batch.groups.sizes.double()

    def per_group(values):
        return group_sum(values[real], gr, G)

    n_correct = per_group((batch.scores > threshold).double())
    r3 = res.r3.double()
    mean = per_group(r3) / sizes.clamp_min(1)
    spread = (per_group((r3 - mean[g.clamp_min(0)]) ** 2) / (sizes - 1).clamp_min(1)).sqrt()  # unbiased std
    for name, pick in (("all_correct", n_correct == sizes), ("all_wrong", n_correct == 0)):
        chosen = pick & contrast
        metrics[f"variance/r3_spread_{name}/std"] = float(spread[chosen].mean()) if chosen.any() else 0.0
    return metrics
