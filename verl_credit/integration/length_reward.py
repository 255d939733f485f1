"""``LengthRewardMixin``: Bingo's significance-aware length reward, before any advantage estimator.

    _compute_advantage  -- when ``credit.length_reward.enabled``: fetch what the scorer needs from
                           TransferQueue, shape ``rm_scores`` (the raw ones stay in
                           ``credit_raw_rm_scores``), log metrics, then ``super()``: every estimator
                           (verl's grpo/gae included, and the plugin's) reads the shaped reward.
    _save_checkpoint    -- after verl's save, write the lambda_dyn schedule state to
                           ``global_step_<N>/credit_length_reward.json`` and, with
                           ``credit.length_reward.anchor=first_seen``, the per-prompt anchors to
                           ``global_step_<N>/credit_length_anchors.json``.
    _load_checkpoint    -- after verl's load, read them back (a warning says the schedule restarts /
                           prompts are anchored again when a file is absent, e.g. a checkpoint
                           written without this option).
    validate_length_reward_run(config, credit)  -- start-up checks (called by validate_run_config).
    apply_length_reward(...)                     -- the shaping step on a TransferQueue batch.

The maths lives in :mod:`verl_credit.core.length_reward`. Only the driver writes the state file; a
``trainer.default_hdfs_dir`` copy of it is not made.
"""

from __future__ import annotations

import json
import logging
import os

import torch
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.workers.utils.padding import response_to_nested

from verl_credit.config import CreditConfig
from verl_credit.core.counterfactual import STAGE_FIELDS
from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.length_reward import (
    DynamicLambdaSchedule,
    LengthRewardResult,
    PromptAnchors,
    ScorerInputs,
    SignificanceScorer,
    compute_length_reward,
    length_reward_metrics,
    prompt_keys,
    resolve_scorer,
    run_scorer,
)
from verl_credit.integration.tq_io import fetch, stage_tensors, uid_column
from verl_credit.integration.verl_registry import require_plugin_trainer

__all__ = [
    "ANCHOR_FILE",
    "RAW_SCORES_FIELD",
    "STATE_FILE",
    "LengthRewardMixin",
    "apply_length_reward",
    "validate_length_reward_run",
]

logger = logging.getLogger(__name__)

RAW_SCORES_FIELD = "credit_raw_rm_scores"
STATE_FILE = "credit_length_reward.json"
ANCHOR_FILE = "credit_length_anchors.json"
BASE_FIELDS = ("uid", "response_mask", "rm_scores")


def validate_length_reward_run(config, credit: CreditConfig) -> None:
    """Start-up checks of ``credit.length_reward`` against the full trainer config (no-op when off).

    The scorer must resolve (a user ``module:function`` is imported here); the shaping runs in the
    plugin trainer (V1, ``trainer.v1.trainer_mode=credit``) and takes its reference counts from the
    group, so ``actor_rollout_ref.rollout.n >= 2``. The ``counterfactual`` scorer's stage is added
    by ``ScoringStageMixin`` (which runs before this mixin).
    """
    lr = credit.length_reward
    if not lr.enabled:
        return
    resolve_scorer(lr.scorer)
    require_plugin_trainer(
        config, "credit.length_reward.enabled=true", "takes its reference token counts from the other rollouts"
    )


def apply_length_reward(
    batch: KVBatchMeta,
    credit: CreditConfig,
    scorer: SignificanceScorer,
    lambda_dyn: float,
    metrics: dict,
    *,
    special_token_ids: tuple[int, ...] = (),
    tokenizer=None,
    anchors: PromptAnchors | None = None,
) -> LengthRewardResult:
    """Fetch, shape, write back ``rm_scores`` (nested) and ``credit_raw_rm_scores``; returns the result.

    ``anchors``: the run's first-seen anchor store (``credit.length_reward.anchor=first_seen``,
    updated in place; the rollouts' ``prompts`` are fetched to key it). Metrics go to ``metrics`` as
    ``credit/length_reward/<quantity>/<stat>``.
    """
    first_seen = credit.length_reward.anchor == "first_seen"
    fields = list(dict.fromkeys([*BASE_FIELDS, *scorer.all_fields, *(["prompts"] if first_seen else [])]))
    data = fetch(batch, fields, who=f"credit.length_reward.scorer={credit.length_reward.scorer}")
    keys = None
    if first_seen:
        prompts = data["prompts"]
        keys = prompt_keys(list(prompts.unbind()) if prompts.is_nested else list(prompts))
        fields.remove("prompts")
    nested_mask = data["response_mask"]
    uids = uid_column(data)
    # the stage's per-rollout fields are not response-shaped: padded on their own
    stage = stage_tensors(data, [f for f in fields if f in STAGE_FIELDS])
    padded = data.select(*[f for f in fields if f != "uid" and f not in stage]).to_padded_tensor()
    padded = {**dict(padded.items()), **stage}
    response_mask, rm_scores = padded["response_mask"], padded["rm_scores"]
    groups = group_index_from_uids(uids)
    inputs = ScorerInputs(
        response_mask=response_mask,
        fields={f: padded[f] for f in scorer.all_fields},
        correct=rm_scores.double().sum(-1) > credit.correct_threshold,
        groups=groups,
        ktae_params=credit.ktae.with_special_ids(special_token_ids),
        tokenizer=tokenizer,
    )
    significance = run_scorer(scorer, inputs)
    result = compute_length_reward(
        significance,
        rm_scores,
        response_mask,
        groups,
        credit.length_reward,
        lambda_dyn,
        correct_threshold=credit.correct_threshold,
        normalize=scorer.normalize,
        anchors=anchors,
        prompt_keys=keys,
    )
    output = {
        "rm_scores": response_to_nested(result.shaped_rm_scores, nested_mask),
        RAW_SCORES_FIELD: response_to_nested(rm_scores, nested_mask),
    }
    tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(output, batch_size=len(batch)))
    metrics.update({f"credit/{k}": v for k, v in length_reward_metrics(result).items()})
    if "credit_cf_scores" in stage:  # rollouts the stage could not score: every token insignificant
        unscored = result.real & result.nonempty & torch.isnan(stage["credit_cf_scores"][:, 0])
        metrics["credit/length_reward/unscored_rollouts/count"] = float(unscored.sum())
        metrics["credit/length_reward/unscored_correct/count"] = float((unscored & result.correct).sum())
    return result


class LengthRewardMixin:
    """Shape the outcome reward before ``super()._compute_advantage`` (see the module docstring).

    ``credit_length_reward_last`` holds the last :class:`LengthRewardResult` (which tokens were
    judged insignificant, r_ins, r_sig, the shaping) for reports.
    """

    credit_length_reward_last: LengthRewardResult | None = None

    def _length_reward_schedule(self) -> DynamicLambdaSchedule:
        schedule = self.__dict__.get("_credit_length_schedule")
        if schedule is None:
            schedule = DynamicLambdaSchedule(self.credit_config.length_reward)
            self._credit_length_schedule = schedule
        return schedule

    def _length_reward_anchors(self) -> PromptAnchors:
        anchors = self.__dict__.get("_credit_length_anchors")
        if anchors is None:
            anchors = PromptAnchors(self.credit_config.length_reward.anchor_capacity)
            self._credit_length_anchors = anchors
        return anchors

    def _length_reward_scorer(self) -> SignificanceScorer:
        scorer = self.__dict__.get("_credit_length_scorer")
        if scorer is None:
            scorer = resolve_scorer(self.credit_config.length_reward.scorer)
            self._credit_length_scorer = scorer
        return scorer

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self.credit_config.length_reward.enabled:
            step = int(getattr(self, "global_steps", 0) or 0)
            schedule = self._length_reward_schedule()
            first_seen = self.credit_config.length_reward.anchor == "first_seen"
            anchors = self._length_reward_anchors() if first_seen else None
            result = apply_length_reward(
                batch,
                self.credit_config,
                self._length_reward_scorer(),
                schedule.value_at(step),
                metrics,
                special_token_ids=self._credit_context().special_token_ids,  # PluginAdvantageMixin
                tokenizer=getattr(self, "tokenizer", None),
                anchors=anchors,
            )
            schedule.observe(step, float(result.outcome[result.real].sum()), int(result.real.sum()))
            metrics.update({f"credit/{k}": v for k, v in schedule.metrics().items()})
            if anchors is not None:
                metrics.update({f"credit/{k}": v for k, v in anchors.metrics().items()})
            self.credit_length_reward_last = result
        return super()._compute_advantage(batch, metrics)

    def _save_checkpoint(self):
        super()._save_checkpoint()
        lr = self.credit_config.length_reward
        if lr.enabled:
            folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
            save_schedule_state(self._length_reward_schedule(), folder)
            if lr.anchor == "first_seen":
                save_anchor_state(self._length_reward_anchors(), folder)

    def _load_checkpoint(self):
        super()._load_checkpoint()
        lr = self.credit_config.length_reward
        if not lr.enabled or not self.global_steps:
            return  # training from scratch
        folder = _resumed_folder(self.config, self.global_steps)
        load_schedule_state(self._length_reward_schedule(), folder)
        if lr.anchor == "first_seen":
            load_anchor_state(self._length_reward_anchors(), folder)


def _write_json(state: dict, folder: str, name: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)
    return path


def save_schedule_state(schedule: DynamicLambdaSchedule, folder: str) -> str:
    """Write ``schedule.state_dict()`` as JSON into ``folder``; returns the file path."""
    return _write_json(schedule.state_dict(), folder, STATE_FILE)


def save_anchor_state(anchors: PromptAnchors, folder: str) -> str:
    """Write ``anchors.state_dict()`` (first-seen reference counts per prompt) as JSON into ``folder``."""
    return _write_json(anchors.state_dict(), folder, ANCHOR_FILE)


def _load_json_state(target, folder: str, name: str, what: str, consequence: str) -> bool:
    """``target.load_state_dict`` from the JSON file ``name`` in ``folder``; False (and a warning
    saying ``consequence``) when there is none."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        logger.warning("credit.length_reward: no %s at %s; %s", what, path, consequence)
        return False
    with open(path) as f:
        target.load_state_dict(json.load(f))
    logger.info("credit.length_reward: %s restored from %s", what, path)
    return True


def load_anchor_state(anchors: PromptAnchors, folder: str) -> bool:
    """Load the anchors saved in ``folder``; False (and a warning) when there are none."""
    consequence = "every prompt is anchored again (anchor=first_seen) on its next sight, by the policy of that time"
    return _load_json_state(anchors, folder, ANCHOR_FILE, "anchor state", consequence)


def load_schedule_state(schedule: DynamicLambdaSchedule, folder: str) -> bool:
    """Load the state saved in ``folder``; False (and a warning) when there is none."""
    consequence = "lambda_dyn restarts from lambda_we/(pi/2) and the score slope is measured again from this step"
    return _load_json_state(schedule, folder, STATE_FILE, "schedule state", consequence)


def _resumed_folder(config, global_steps: int) -> str:
    """The ``global_step_<N>`` folder verl's ``_load_checkpoint`` resumed from."""
    if config.trainer.resume_mode == "resume_path":
        folder = config.trainer.resume_from_path
    else:
        folder = os.path.join(config.trainer.default_local_dir, f"global_step_{global_steps}")
    return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)
