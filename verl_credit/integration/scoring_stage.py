"""``ScoringStageMixin``: verl_credit's extra no-grad forward stage, run before the advantage step.

    _init_resource_pool_mgr  -- when a stage product is needed, the actor role runs
                                ``CreditActorRolloutRefWorker`` instead of verl's worker.
    _compute_advantage       -- run the stage, then ``super()`` (the length reward, estimators and
                                weights read its output); warns once per run when the stage scored
                                few rollouts (``verl_credit.integration.stage_coverage``).
    stage_products(name, credit) -> {"counterfactual": CounterfactualConfig | None, "reference": VarianceParams | None}
    run_scoring_stage(batch, worker_group, products, span_params, temperature, metrics, every_group)

Products and the rows scored for each:
    counterfactual (``credit.token_weighting`` / ``adv_estimator=counterfactual`` with mode not
        uniform, or ``credit.length_reward.scorer=counterfactual``): rows of groups whose outcome
        advantages are not all zero (with ``credit.length_reward.enabled``: every real rollout of a
        group with at least two, because the length reward is shaped after the stage, on its
        output, and makes the outcomes of one group differ), first of identical pairs only (the
        others copy its scores), never verl's padding rows;
    reference (estimators registered with ``stage=("reference",)``, e.g. ``variance_weighted``):
        every real rollout of a group with at least two.

Temperature: the stage scores with the model's own distribution (temperature 1,
:data:`STAGE_TEMPERATURE`), whatever ``rollout.temperature`` is. verl's engine divides the logits
by the ``temperature`` it is handed; the stage hands it 1.0, so the engine's numbers equal the CPU
scorer's (``scoring.hf_scorer``: explain, the gym, the benchmarks) and a span's importance does
not change with the sampling temperature of the run.
"""

from __future__ import annotations

import time

import ray
import torch
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.utils import Role

from verl_credit.core.groups import contrast_rows, group_index_from_uids, multi_rollout_rows, sequence_scores
from verl_credit.core.length_reward import resolve_scorer
from verl_credit.integration.stage_coverage import StageCoverage, warn_low_coverage
from verl_credit.integration.tq_io import fetch, stage_tensors, uid_column
from verl_credit.integration.worker import STAGE_KEY, CreditActorRolloutRefWorker, config_dict, stage_input_fields
from verl_credit.registry import get_estimator, list_estimators
from verl_credit.scoring import duplicate_rows
from verl_credit.spans import SpanParams, span_params_of
from verl_credit.weighting import STAGE_FIELDS, needs_scoring_stage, weighting_active

ACTOR_ROLES = (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor)
STAGE_TEMPERATURE = 1.0


def stage_products(estimator: str, credit) -> dict:
    """What the stage must compute for this run (None where nothing)."""
    spec = get_estimator(estimator) if estimator in list_estimators() else None
    lr = credit.length_reward
    for_length_reward = lr.enabled and resolve_scorer(lr.scorer).stage == "counterfactual"
    weighting = needs_scoring_stage(estimator, credit.token_weighting, credit.counterfactual)
    return {
        "counterfactual": credit.counterfactual if weighting or for_length_reward else None,
        "reference": credit.variance if spec is not None and "reference" in spec.stage else None,
    }


def scoring_requests(uids, rm_scores, response_mask, prompts, responses, every_group: bool = False):
    """(counterfactual request (B,), {duplicate row: source row}, reference request (B,)) for a padded batch.

    ``every_group``: request counterfactual scores for every real rollout of a group with >= 2
    (the length reward is on), not only for groups whose outcome advantages are not all zero.
    """
    groups = group_index_from_uids(uids)
    ref_request = multi_rollout_rows(groups)
    if every_group:
        cf_request = ref_request.clone()
    else:
        cf_request = contrast_rows(sequence_scores(rm_scores, response_mask, uids), groups)
    lengths = response_mask.sum(-1).tolist()
    valid = [responses[i, : int(n)] for i, n in enumerate(lengths)]
    _, copies = duplicate_rows(prompts, valid, cf_request.nonzero().flatten().tolist())
    cf_request[list(copies)] = False
    return cf_request, copies, ref_request


def run_scoring_stage(
    batch: KVBatchMeta,
    worker_group,
    products: dict,
    span_params: SpanParams,
    temperature: float,
    metrics: dict,
    every_group: bool = False,
) -> StageCoverage | None:
    """Ask the actor workers for the stage's products; results land in TransferQueue; returns the
    counterfactual product's :class:`StageCoverage` (None without it). ``span_params``
    (the run's ``credit.counterfactual``) drive answer detection for every product; ``every_group``
    as in :func:`scoring_requests`."""
    start = time.perf_counter()
    fields = ["uid", "rm_scores", "response_mask", "prompts", "responses"]
    data = fetch(batch, fields, who="the scoring stage")
    prompts = list(data["prompts"].unbind())
    padded = data.select("rm_scores", "response_mask", "responses").to_padded_tensor()
    uids = uid_column(data)
    cf_request, copies, ref_request = scoring_requests(
        uids, padded["rm_scores"], padded["response_mask"], prompts, padded["responses"], every_group
    )
    cf, ref = products["counterfactual"], products["reference"]
    requests = {}
    if cf is not None:
        requests["credit_cf_request"] = cf_request.long().unsqueeze(1)
    if ref is not None:
        requests["credit_ref_request"] = ref_request.long().unsqueeze(1)
    tq.kv_batch_put(
        keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(requests, batch_size=len(batch))
    )
    stage = {
        "counterfactual": config_dict(cf) if cf is not None else None,
        "reference": {"answer_template": ref.answer_template} if ref is not None else None,
        "span_params": span_params_of(span_params),
    }
    # verl's dispatch sends a worker only the fields its meta lists (when it lists any, as every meta
    # after ``_compute_old_log_prob`` does): dispatch a meta of exactly what the worker reads
    stage_meta = KVBatchMeta(
        keys=list(batch.keys),
        tags=batch.tags,
        partition_id=batch.partition_id,
        fields=stage_input_fields(stage),
        extra_info={**(batch.extra_info or {}), STAGE_KEY: stage, "temperature": temperature},
    )
    worker_group.compute_credit_scores(stage_meta)

    wanted = ["credit_stage_tokens", *(STAGE_FIELDS if cf is not None else ())]
    out = stage_tensors(fetch(batch, wanted, who="the scoring stage's output"), wanted)
    if cf is not None and copies:
        dense = {f: out[f].clone() for f in STAGE_FIELDS}
        for row, source in copies.items():
            for f in STAGE_FIELDS:
                dense[f][row] = dense[f][source]
        tq.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(dense, batch_size=len(batch))
        )
    coverage = None
    if cf is not None:
        scores = dense["credit_cf_scores"] if copies else out["credit_cf_scores"]
        asked = cf_request.clone()
        asked[list(copies)] = True
        coverage = StageCoverage(asked, ~torch.isnan(scores[:, 0]), padded["responses"], padded["response_mask"])
    tokens = out["credit_stage_tokens"].sum(0)
    real = sum(not t.get("is_padding", False) for t in batch.tags)
    metrics["credit/stage/forward_tokens/count"] = float(tokens[0])
    metrics["credit/stage/forward_tokens_vs_naive/ratio"] = float(tokens[0]) / max(float(tokens[1]), 1.0)
    metrics["timing_s/credit_scoring_stage"] = time.perf_counter() - start
    if cf is not None:
        metrics["credit/counterfactual/rollouts_requested/count"] = float(cf_request.sum())
        metrics.update({f"credit/{k}": v for k, v in coverage.metrics().items()})
        metrics["credit/counterfactual/rollouts_skipped/count"] = float(real - int(cf_request.sum()))
        metrics["credit/counterfactual/duplicates_copied/count"] = float(len(copies))
    if ref is not None:
        metrics["credit/variance/rollouts_scored/count"] = float(ref_request.sum())
    return coverage


class ScoringStageMixin:
    """Adds the scoring stage (and its worker) to the trainer when the run needs it."""

    def _stage_products(self) -> dict:
        return stage_products(self.config.algorithm.adv_estimator, self.credit_config)

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        if any(v is not None for v in self._stage_products().values()):
            for role in ACTOR_ROLES:
                if role in self.role_worker_mapping:
                    self.role_worker_mapping[role] = ray.remote(CreditActorRolloutRefWorker)

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        products = self._stage_products()
        if any(v is not None for v in products.values()):
            temperature = STAGE_TEMPERATURE
            credit = self.credit_config
            coverage = run_scoring_stage(
                batch,
                self.actor_rollout_wg,
                products,
                credit.counterfactual,
                temperature,
                metrics,
                every_group=credit.length_reward.enabled,
            )
            if coverage is not None and coverage.low and not self.__dict__.get("_credit_low_coverage_warned"):
                self._credit_low_coverage_warned = True
                self._warn_low_coverage(coverage)
        return super()._compute_advantage(batch, metrics)

    def _warn_low_coverage(self, coverage: StageCoverage) -> str | None:
        credit, name = self.credit_config, self.config.algorithm.adv_estimator
        consumers = []
        if weighting_active(name, credit.token_weighting):
            base = "grpo" if name == "counterfactual" else name  # adv_estimator=counterfactual is weighted grpo
            consumers.append(f"keep weight 1 on every token (their advantages are plain {base})")
        if credit.length_reward.enabled:
            consumers.append("count as all insignificant for the length reward's counterfactual scorer")
        return warn_low_coverage(
            coverage,
            int(getattr(self, "global_steps", 0) or 0),
            getattr(self, "tokenizer", None),
            credit.counterfactual,
            credit.counterfactual.answer_source == "gold",
            self.config.data.get("max_response_length", None),
            " and ".join(consumers) or "get no scores",
        )
