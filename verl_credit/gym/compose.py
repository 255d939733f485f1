"""The peers and the compositions of ``gym.methods``: verl's advantage estimators, the high-entropy token
filter after any estimator, the mean-1 rescaling of token weights, verl's Clip-Cov / KL-Cov losses, and
the batch fields verl's trainer passes to an estimator.

Public API:
    trainer_fields(fields, r, old_log_probs, ref_log_probs) -> dict  -- what ``integration/tq_batch`` passes.
    verl_advantages(name, batch, old_log_probs, sum_pi_squared) -> CreditOutput  -- rloo, optimal_token_baseline.
    apply_entropy_filter(out, entropy, mask, quantile, denominator) -> CreditOutput
    apply_mean1(out, mask, label) -> CreditOutput
    mean1_factor(weights, mask) / mean1_factor_loop(...)  -- n_i / sum_t w_it per rollout (B,).
    policy_loss(method, actor_kwargs) -> (loss_fn, ActorConfig)  -- verl's loss and its config.

Entropy filter (``core.token_filter``, the one implementation the plugin's ``credit.token_filter`` uses):
tau = the k-th largest H over the step batch's valid tokens, k = ceil(q N); keep = H >= tau; A' = A * keep
(denominator "all", TRL's choice, default) or A * keep * N / N_kept ("kept"). H comes from the gym's
old-log-prob forward (the sampling policy: the gym samples from the current weights at temperature 1).
The kept mask joins the method's token weights (w' = w * keep; 1 * keep for a rollout-level estimator).

Mean 1 (``+m1``): with token weights w (B, T) folded into A, A'_it = A_it * n_i / sum_t w_it (n_i valid
tokens of rollout i; 0 where the sum is 0): the weights become w * n_i / sum_t w_it, mean 1 per rollout,
the rollout-level factor unchanged. A method without token weights is refused (ValueError naming it).
"""

from __future__ import annotations

import numpy as np
import torch

from verl_credit.batch import CreditBatch, CreditOutput
from verl_credit.core.token_filter import filter_advantages, high_entropy_mask, token_filter_metrics

__all__ = [
    "trainer_fields",
    "verl_advantages",
    "apply_entropy_filter",
    "apply_mean1",
    "mean1_factor",
    "mean1_factor_loop",
    "policy_loss",
]


def trainer_fields(fields, r, old_log_probs=None, ref_log_probs=None) -> dict:
    """The declared ``fields`` (``EstimatorSpec.fields``) as verl's trainer passes them in
    ``CreditBatch.fields`` (``old_log_probs`` goes to ``CreditBatch.old_log_probs`` there, not here):
    prompts = the left-padded prompt ids (B, P), as verl's ``prompts``; rollout_log_probs = the old
    log-probs (the gym samples with the policy itself, so the two are one); ref_log_prob = the reference
    policy's log-probs (B, T) (the warm start). ValueError naming a field the gym cannot give."""
    out = {}
    for name in fields:
        if name == "old_log_probs":
            continue
        if name == "prompts":
            out[name] = r.prompt_ids
        elif name == "rollout_log_probs":
            value = old_log_probs
        elif name == "ref_log_prob":
            value = ref_log_probs
        else:
            raise ValueError(f"gym: the estimator declares field {name!r}, which the gym cannot pass (no critic)")
        if name != "prompts":
            if value is None:
                raise ValueError(f"gym: the estimator declares field {name!r} and none was computed for this batch")
            out[name] = value
    return out


def verl_advantages(name: str, batch: CreditBatch, old_log_probs=None, sum_pi_squared=None) -> CreditOutput:
    """verl's own estimator ``name`` ("rloo" or "optimal_token_baseline") on the batch, called as
    ``ray_trainer.compute_advantage`` calls it (index = the uids; OTB with old_log_probs and
    sum_pi_squared, no rollout IS weights)."""
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    fn = get_adv_estimator_fn(name)
    kwargs = {
        "token_level_rewards": batch.token_level_rewards,
        "response_mask": batch.response_mask,
        "index": np.array(batch.uids, dtype=object),
    }
    if name == "optimal_token_baseline":
        if old_log_probs is None or sum_pi_squared is None:
            raise ValueError("gym optimal_token_baseline: needs old_log_probs and sum_pi_squared")
        kwargs.update(old_log_probs=old_log_probs, sum_pi_squared=sum_pi_squared, rollout_is_weights=None)
    else:
        kwargs["config"] = None
    advantages, returns = fn(**kwargs)
    return CreditOutput(advantages=advantages.float(), returns=returns.float())


def apply_entropy_filter(out: CreditOutput, entropy, mask, quantile: float, denominator: str) -> CreditOutput:
    """A' = filter_advantages(A, keep, mask, denominator), keep = the top-``quantile`` entropy tokens of the
    batch; token weights w' = (w or 1) * keep; ``token_filter/...`` metrics added."""
    keep, tau = high_entropy_mask(entropy, mask, quantile)
    adv = filter_advantages(out.advantages, keep, mask, denominator)
    weights = keep.float() if out.token_weights is None else out.token_weights * keep
    stats = token_filter_metrics(entropy, mask, keep, out.advantages, tau)
    metrics = {**out.metrics, **{f"token_filter/{k}": v for k, v in stats.items()}}
    return CreditOutput(
        advantages=adv, returns=adv, token_weights=weights, metrics=metrics, diagnostics=out.diagnostics
    )


def mean1_factor(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """n_i / sum_t w_it over valid tokens (0 where the sum is <= 0). (B, T), (B, T) -> (B,) float64."""
    m = mask.double()
    total = (weights.double() * m).sum(1)
    return torch.where(total > 0, m.sum(1) / total.clamp_min(1e-12), torch.zeros_like(total))


def mean1_factor_loop(weights, mask) -> torch.Tensor:
    """:func:`mean1_factor` with Python loops (the test reference)."""
    out = torch.zeros(weights.shape[0], dtype=torch.float64)
    for i in range(weights.shape[0]):
        total = sum(float(weights[i, t]) for t in range(weights.shape[1]) if mask[i, t])
        count = sum(1 for t in range(weights.shape[1]) if mask[i, t])
        out[i] = count / total if total > 0 else 0.0
    return out


def apply_mean1(out: CreditOutput, mask, label: str) -> CreditOutput:
    """``+m1``: A' = A * mean1_factor(w), w' = w * factor (mean 1 per rollout); ValueError naming the
    method when it has no token weights."""
    if out.token_weights is None:
        raise ValueError(
            f"gym --estimators {label!r}: +m1 needs token weights and the estimator returned none "
            "(CreditOutput.token_weights is None: not a token weighting)"
        )
    factor = mean1_factor(out.token_weights, mask).float().unsqueeze(1)
    adv = out.advantages * factor
    return CreditOutput(
        advantages=adv,
        returns=adv,
        token_weights=out.token_weights * factor * mask,
        metrics=out.metrics,
        diagnostics=out.diagnostics,
    )


def policy_loss(method, actor_kwargs: dict):
    """(verl's ``get_policy_loss_fn(method.loss_mode)``, ActorConfig with ``policy_loss`` = verl's
    ``PolicyLossConfig`` defaults and, when given, the method's clip_cov_ratio / kl_cov_ratio)."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.workers.config.actor import ActorConfig, PolicyLossConfig

    extra = {}
    if method.loss_ratio is not None:
        extra[f"{method.loss_mode}_ratio"] = method.loss_ratio
    loss_cfg = PolicyLossConfig(loss_mode=method.loss_mode, **extra)
    return get_policy_loss_fn(method.loss_mode), ActorConfig(**actor_kwargs, policy_loss=loss_cfg)
