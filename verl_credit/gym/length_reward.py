"""The length reward (Bingo) in the gym's learning loop: the ``+lr`` method option.

Public API:
    GymLengthReward(config, anchor)          -- the state one run keeps, as the trainer's
                                                ``LengthRewardMixin`` keeps it: the lambda_dyn
                                                schedule and, with ``anchor="first_seen"``, the
                                                per-prompt anchors (created once per run).
    GymLengthReward.apply(r, old_log_probs, tokenizer, step) -> (shaped Rollouts, LengthRewardResult, metrics)

Where and how, as ``integration/length_reward.LengthRewardMixin._compute_advantage``: after the
rollouts are chosen (``+rb``) and the old log-probs computed, before the advantage estimator. The
outcome reward goes on the last valid token (the ``rm_scores`` the trainer holds, built by
``CreditBatch.from_outcomes``), the scorer (``credit.length_reward.scorer``, default ``surprisal`` =
-log pi_old from the old log-probs, CPU-only) gives significance scores, and
``core.length_reward.compute_length_reward`` shapes the reward with lambda_dyn from the run's
``DynamicLambdaSchedule`` at ``step`` (the trainer's 1-based ``global_steps``); the schedule then
observes the step's raw rewards. Prompt keys are ``core.length_reward.prompt_keys`` of the valid
prompt token ids (the gym's uids ``p0, p1, ...`` repeat every step, as verl's change every step: the
key, not the uid, finds a prompt seen before). The estimator then reads the shaped reward.
"""

from __future__ import annotations

import dataclasses

import torch

from verl_credit.batch import special_token_ids
from verl_credit.config import CreditConfig
from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.length_reward import (
    DynamicLambdaSchedule,
    LengthRewardResult,
    PromptAnchors,
    ScorerInputs,
    compute_length_reward,
    length_reward_metrics,
    prompt_keys,
    resolve_scorer,
    run_scorer,
)
from verl_credit.gym.rollout import Rollouts, credit_batch

__all__ = ["GymLengthReward"]


class GymLengthReward:
    """One run's length-reward state (see the module docstring).

    config: the run's CreditConfig; ``credit.length_reward`` is used with ``enabled=True`` and
    ``anchor`` replaced. The scorer must not need a scoring stage (the gym's learning loop does not
    run the counterfactual stage for the length reward): ValueError naming the option otherwise.
    Attributes: credit (the CreditConfig used), scorer, schedule, anchors (None with ``group``).
    """

    def __init__(self, config: CreditConfig, anchor: str):
        lr = dataclasses.replace(config.length_reward, enabled=True, anchor=anchor)  # validates the anchor
        self.credit = dataclasses.replace(config, length_reward=lr)
        self.scorer = resolve_scorer(lr.scorer)
        if self.scorer.stage is not None:
            raise ValueError(
                f"gym +lr: credit.length_reward.scorer={lr.scorer} needs the {self.scorer.stage} scoring stage, "
                "which the gym's learning loop does not run; use a scorer without a stage (surprisal, ktae)"
            )
        self.schedule = DynamicLambdaSchedule(lr)
        self.anchors = PromptAnchors(lr.anchor_capacity) if anchor == "first_seen" else None

    def apply(
        self, r: Rollouts, old_log_probs: torch.Tensor, tokenizer, step: int
    ) -> tuple[Rollouts, LengthRewardResult, dict[str, float]]:
        """Shape ``r.rewards`` for training step ``step`` (1-based, as verl's ``global_steps``).

        r: gym ``Rollouts`` (B rows); old_log_probs: FloatTensor[B, T] of the sampled tokens.
        -> (Rollouts with the shaped rewards, LengthRewardResult, {"length_reward/...": float}).
        Updates the schedule and the anchors.
        """
        lr = self.credit.length_reward
        B = r.responses.shape[0]
        keys = prompt_keys([r.valid("prompt", i) for i in range(B)]) if self.anchors is not None else None
        rm_scores = credit_batch(
            r
        ).token_level_rewards  # (B, T): the outcome on the last valid token, as verl's rm_scores
        groups = group_index_from_uids(r.uids)
        inputs = ScorerInputs(
            response_mask=r.response_mask,
            fields={"old_log_probs": old_log_probs, "responses": r.responses},
            correct=rm_scores.double().sum(-1) > self.credit.correct_threshold,
            groups=groups,
            ktae_params=self.credit.ktae.with_special_ids(special_token_ids(tokenizer)),
            tokenizer=tokenizer,
        )
        result = compute_length_reward(
            run_scorer(self.scorer, inputs),
            rm_scores,
            r.response_mask,
            groups,
            lr,
            self.schedule.value_at(step),
            correct_threshold=self.credit.correct_threshold,
            normalize=self.scorer.normalize,
            anchors=self.anchors,
            prompt_keys=keys,
        )
        self.schedule.observe(step, float(result.outcome[result.real].sum()), int(result.real.sum()))
        metrics = {**length_reward_metrics(result), **self.schedule.metrics()}
        if self.anchors is not None:
            metrics.update(self.anchors.metrics())
        shaped = result.shaped_rm_scores.double().sum(-1).to(r.rewards.dtype)
        return dataclasses.replace(r, rewards=shaped), result, metrics
