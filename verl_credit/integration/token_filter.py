"""``TokenFilterMixin``: the high-entropy ("80/20") token filter after every advantage estimator.

    _compute_advantage            -- ``super()`` first (verl's grpo/rloo/gae/..., or a plugin estimator,
                                     with the counterfactual token weights and the length reward), then,
                                     when ``credit.token_filter.entropy_quantile`` is set: fetch
                                     ``entropy``, ``advantages`` and ``response_mask`` of the whole step
                                     batch from TransferQueue, keep the top quantile of the valid tokens
                                     by entropy, write the filtered ``advantages`` back, log metrics.
    validate_token_filter_run(config, credit)   -- start-up checks (called by ``validate_run_config``).
    apply_token_filter(batch, cfg, metrics)     -- the filtering step on a TransferQueue batch.

The maths is :mod:`verl_credit.core.token_filter` (the gym's ``entropy80`` method calls the same
functions). ``returns`` are left alone (a critic, with ``gae``, still learns every token's value).

Where the entropy comes from (verl 0.9.1, V1): ``PPOTrainer._compute_old_log_prob`` asks the actor
for log-probs with ``calculate_entropy: True`` whatever ``actor.calculate_entropy`` says and stores
the per-token entropy of the sampling distribution (logits divided by ``rollout.temperature``) as
the TransferQueue field ``entropy``; every engine computes it (FSDP with or without remove-padding
or fused kernels, Megatron, TorchTitan, AutoModel). ``actor.calculate_entropy`` only adds an entropy
computation to the update's forward, so the filter does not turn it on. The one case without
entropy is ``algorithm.rollout_correction.bypass_mode=true`` (old log-probs are copied from the
rollout, no forward runs): refused at start-up.

dp ranks and mini-batches: ``_compute_advantage`` runs in the driver on the whole step batch, after
``_balance_batch`` and before the batch is cut into dp shards and PPO mini-batches, so every rank
and mini-batch trains with the same threshold; a mini-batch keeps more or fewer than the quantile of
its own tokens. verl's padding rows (response_mask 0) never count.

Metrics (``credit/token_filter/...``; no "min"/"max" in the names, verl reduces by substring):
    kept_fraction, entropy_threshold, entropy_kept/mean, entropy_dropped/mean, advantage_mass_kept
    (sum |A| over kept tokens / over all valid tokens, of the advantages before filtering).
"""

from __future__ import annotations

import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.workers.utils.padding import response_to_nested

from verl_credit.config import CreditConfig
from verl_credit.core.token_filter import (
    TokenFilterConfig,
    filter_advantages,
    high_entropy_mask,
    token_filter_metrics,
)
from verl_credit.integration.tq_io import fetch
from verl_credit.integration.verl_registry import require_plugin_trainer

__all__ = [
    "ENTROPY_FIELD",
    "SEQUENCE_LEVEL_LOSSES",
    "TOKEN_LEVEL_LOSSES",
    "KEPT_DENOMINATOR_LOSSES",
    "TokenFilterMixin",
    "apply_token_filter",
    "validate_token_filter_run",
]

ENTROPY_FIELD = "entropy"
# verl 0.9.1's policy losses, by what the filter (advantage 0 on a dropped token) does to them:
# sequence-level ratio or advantage: a dropped token still moves its sequence's ratio / mean advantage
SEQUENCE_LEVEL_LOSSES = ("gspo", "geo_mean")
# token-level: a token with A = 0 gets no policy-gradient term (kl_cov's |log ratio| penalty on its
# top-covariance tokens and dro's quadratic log-ratio penalty still act on every token they cover)
TOKEN_LEVEL_LOSSES = (
    "vanilla",
    "dppo_tv",
    "dppo_kl",
    "sapo",
    "gpg",
    "clip_cov",
    "kl_cov",
    "dro",
    "cispo",
    "bypass_mode",
)
# linear in a positive scale of A (the clip decisions depend only on its sign): A * N / N_kept is
# exactly the mean over the kept tokens with loss_agg_mode=token-mean
KEPT_DENOMINATOR_LOSSES = ("vanilla", "cispo", "gpg", "dppo_tv", "dppo_kl")
METRIC_NAMES = {"threshold": "entropy_threshold"}


def validate_token_filter_run(config, credit: CreditConfig) -> None:
    """Start-up checks of ``credit.token_filter`` against the full trainer config (no-op when off).

    ValueError, naming the keys, for: the legacy trainer or another V1 mode (the filter runs in the
    plugin trainer); a sequence-level or unknown policy loss; ``denominator=kept`` with a loss or
    ``loss_agg_mode`` where it is not the mean over the kept tokens; a run without verl's entropy
    (``algorithm.rollout_correction.bypass_mode=true``)."""
    tf = credit.token_filter
    if not tf.enabled:
        return
    key = f"credit.token_filter.entropy_quantile={tf.entropy_quantile}"
    require_plugin_trainer(config, key)
    actor = config.actor_rollout_ref.actor
    loss_mode = str(actor.policy_loss.get("loss_mode", "vanilla"))
    if loss_mode in SEQUENCE_LEVEL_LOSSES:
        raise ValueError(
            f"{key} needs a token-level policy loss, but actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode} "
            "is sequence-level (a dropped token still moves its sequence's ratio); use e.g. vanilla, clip_cov or kl_cov"
        )
    if loss_mode not in TOKEN_LEVEL_LOSSES:
        raise ValueError(
            f"{key}: actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode} is not one of verl's token-level "
            f"losses the filter is checked against ({', '.join(TOKEN_LEVEL_LOSSES)})"
        )
    agg = str(actor.get("loss_agg_mode", "token-mean"))
    if tf.denominator == "kept" and (loss_mode not in KEPT_DENOMINATOR_LOSSES or agg != "token-mean"):
        raise ValueError(
            f"credit.token_filter.denominator=kept (the mean over the kept tokens) is exact only with "
            f"actor_rollout_ref.actor.policy_loss.loss_mode in ({', '.join(KEPT_DENOMINATOR_LOSSES)}) and "
            f"actor_rollout_ref.actor.loss_agg_mode=token-mean, got loss_mode={loss_mode}, loss_agg_mode={agg}; "
            "use credit.token_filter.denominator=all"
        )
    corr = config.algorithm.get("rollout_correction", None)
    if corr is not None and corr.get("bypass_mode", False):
        raise ValueError(
            f"{key} reads the entropy of verl's old-log-prob forward, which "
            "algorithm.rollout_correction.bypass_mode=true skips: set it to false"
        )


def apply_token_filter(batch: KVBatchMeta, cfg: TokenFilterConfig, metrics: dict) -> KVBatchMeta:
    """Filter the ``advantages`` of every row of ``batch`` in TransferQueue (one threshold for the step
    batch); metrics into ``metrics`` as ``credit/token_filter/<quantity>[/<stat>]``. Returns the meta
    of the write."""
    data = fetch(batch, [ENTROPY_FIELD, "advantages", "response_mask"], who="credit.token_filter")
    nested_mask = data["response_mask"]
    padded = data.to_padded_tensor()
    entropy, advantages, mask = padded[ENTROPY_FIELD], padded["advantages"], padded["response_mask"]
    keep, tau = high_entropy_mask(entropy, mask, cfg.entropy_quantile)
    filtered = filter_advantages(advantages, keep, mask, cfg.denominator)
    for name, value in token_filter_metrics(entropy, mask, keep, advantages, tau).items():
        metrics[f"credit/token_filter/{METRIC_NAMES.get(name, name)}"] = value
    output = TensorDict({"advantages": response_to_nested(filtered, nested_mask)}, batch_size=len(batch))
    return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)


class TokenFilterMixin:
    """``_compute_advantage``: every estimator and weighting first, then the filter (module docstring)."""

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        out = super()._compute_advantage(batch, metrics)
        cfg = self.credit_config.token_filter
        if not cfg.enabled:
            return out
        written = apply_token_filter(out, cfg, metrics)
        written.extra_info = {**(out.extra_info or {}), **(written.extra_info or {})}
        return written
