"""Plugin advantages on a batch held in TransferQueue (verl 0.9 V1 trainer).

    compute_plugin_advantage(config, batch, estimator, ctx, metrics) -> KVBatchMeta

Does what verl's ``PPOTrainer._compute_advantage`` does (KL-in-reward, rollout correction, write
``advantages``/``returns`` back as nested tensors), with the plugin estimator in place of verl's
``compute_advantage`` and ``responses`` (plus the fields the estimator declares) fetched as well.
"""

from __future__ import annotations

import numpy as np
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.protocol import DataProto
from verl.trainer.ppo.ray_trainer import apply_kl_penalty
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.workers.utils.padding import response_to_nested

from verl_credit.batch import CreditBatch, EstimatorContext
from verl_credit.estimators import REFERENCE_FIELDS
from verl_credit.integration.tq_io import fetch, stage_tensors, uid_column
from verl_credit.registry import EstimatorSpec, compute_advantages
from verl_credit.scoring import CounterfactualConfig
from verl_credit.weighting import STAGE_FIELDS, apply_counterfactual_weights

STOCK_FIELDS = ("uid", "response_mask", "rm_scores", "rollout_log_probs", "old_log_probs", "ref_log_prob", "values")


def _check_single_output_sessions(keys: list[str]) -> None:
    """Keys are ``{uid}_{session}_{index}``; index > 0 means a multi-output agent loop."""
    for key in keys:
        parts = key.rsplit("_", 2)
        if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) > 0:
            raise ValueError(
                f"TransferQueue key {key!r} is output {parts[2]} of a multi-output agent loop; verl_credit "
                "estimators need one output per rollout (single-turn agent loops)"
            )


def compute_plugin_advantage(
    config,
    batch: KVBatchMeta,
    estimator: EstimatorSpec,
    ctx: EstimatorContext,
    metrics: dict,
    kl_ctrl=None,
    weighting: CounterfactualConfig | None = None,
) -> KVBatchMeta:
    """Fetch, estimate, (weight,) write back. ``config`` is the full trainer config (reads
    ``algorithm``); ``kl_ctrl`` is the trainer's KL controller when ``algorithm.use_kl_in_reward``
    is on; ``weighting`` applies counterfactual token weights to the estimator's advantages."""
    _check_single_output_sessions(batch.keys)
    stage_fields = STAGE_FIELDS if weighting is not None and weighting.mode != "uniform" else ()
    if "reference" in estimator.stage:
        stage_fields = (*stage_fields, *REFERENCE_FIELDS)
    fields = list(dict.fromkeys([*STOCK_FIELDS, "responses", *estimator.fields, *stage_fields]))
    needed = ("uid", "responses", "response_mask", "rm_scores", *estimator.fields, *stage_fields)
    data = fetch(batch, fields, needed, who=f"estimator {estimator.name!r}")
    nested_mask = data["response_mask"]
    stage = stage_tensors(data, stage_fields)  # per-rollout tensors, not response-shaped
    data = data.exclude(*stage_fields)
    uids = uid_column(data)
    data = DataProto(batch=data.exclude("uid").to_padded_tensor())
    data.non_tensor_batch["uid"] = np.array(uids, dtype=object)
    data.batch["token_level_scores"] = data.batch["rm_scores"]

    algo = config.algorithm
    if algo.use_kl_in_reward:
        data, kl_metrics = apply_kl_penalty(data, kl_ctrl=kl_ctrl, kl_penalty=algo.kl_penalty)
        metrics.update(kl_metrics)
    else:
        data.batch["token_level_rewards"] = data.batch["token_level_scores"]

    corr_cfg = algo.get("rollout_correction", None)
    bypass = corr_cfg and corr_cfg.get("bypass_mode", False)
    rollout_correction = corr_cfg is not None and "rollout_log_probs" in data.batch.keys() and not bypass
    if rollout_correction:
        data, is_metrics = compute_rollout_correction_and_add_to_batch(data, corr_cfg)
        metrics.update(is_metrics)

    tensors = data.batch
    credit_batch = CreditBatch(
        responses=tensors["responses"],
        response_mask=tensors["response_mask"],
        token_level_rewards=tensors["token_level_rewards"],
        uids=[str(u) for u in data.non_tensor_batch["uid"]],
        old_log_probs=tensors["old_log_probs"] if "old_log_probs" in tensors.keys() else None,
        fields={
            **{f: tensors[f] for f in estimator.fields if f in tensors.keys() and f != "old_log_probs"},
            **stage,
        },
    )
    out = compute_advantages(estimator, credit_batch, ctx)
    if weighting is not None:
        out = apply_counterfactual_weights(out, credit_batch, weighting, ctx.global_step)
    metrics.update({f"credit/{k}": v for k, v in out.metrics.items()})

    output = {"advantages": out.advantages, "returns": out.returns}
    if algo.use_kl_in_reward:
        output["token_level_rewards"] = tensors["token_level_rewards"]
    if rollout_correction:
        output["response_mask"] = tensors["response_mask"]
        if "rollout_is_weights" in tensors.keys():
            output["rollout_is_weights"] = tensors["rollout_is_weights"]
    nested = {k: response_to_nested(v, nested_mask) for k, v in output.items()}
    return tq.kv_batch_put(
        keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(nested, batch_size=len(batch))
    )
