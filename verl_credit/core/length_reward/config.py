"""The ``credit.length_reward`` block: its options, defaults and start-up checks.

Public API:
    LengthRewardConfig   -- the dataclass; ``__post_init__`` raises ValueError naming the key.
    SCHEDULES            -- values of ``schedule`` ("bingo", "constant"), see :mod:`.schedule`.
    ANCHORS              -- values of ``anchor`` ("first_seen", "group"), see :mod:`.anchors`.

The formulas the options enter are in the package docstring (:mod:`verl_credit.core.length_reward`)
and beside the code that uses them: ``threshold`` in :func:`.shaping.significance_counts`,
``lambda_c``/``lambda_wn``/``lambda_we`` in :func:`.shaping.length_reward_shaping`, the slope
options in :class:`.schedule.DynamicLambdaSchedule`, ``anchor``/``anchor_capacity`` in :mod:`.anchors`.
"""

from __future__ import annotations

from dataclasses import dataclass

from verl_credit.core.checks import is_int, is_number
from verl_credit.core.length_reward.scorers import BUILTIN_SCORERS

__all__ = ["ANCHORS", "SCHEDULES", "LengthRewardConfig"]

SCHEDULES = ("bingo", "constant")
ANCHORS = ("first_seen", "group")


@dataclass
class LengthRewardConfig:
    """Options of the significance-aware length reward: the ``credit.length_reward`` block.

    Attributes:
        enabled: bool, default False. Shape the outcome reward of every rollout before any
            advantage estimator runs (composes with grpo, ktae and the other estimators).
        scorer: str, default "surprisal". Where the per-token significance comes from:
            "surprisal": -log pi_old of each token (the trainer's ``old_log_probs``), min-max
            normalised per response; predictable tokens are insignificant.
            "ktae": |K| of the token (KTAE's key-token value, options from ``credit.ktae``).
            "counterfactual": the span importances I_hat of the counterfactual scoring stage (the
            trainer then runs that stage on every rollout of a group with >= 2 rollouts, span
            settings from ``credit.counterfactual``); every token outside a measured span (the
            answer, text between spans, all of a rollout the stage could not score) is
            insignificant (see ``core.counterfactual.token_significance``).
            "module.path:function": a user scorer loaded with importlib (e.g. an LLMLingua-2
            wrapper); a plain callable or one decorated with ``significance_scorer``.
        threshold: float in [0, 1], default 0.5 (the authors' script). A token whose normalised
            score is < threshold is insignificant, otherwise significant.
        lambda_c: float >= 0, default 5. Weight of the bonus of correct rollouts.
        lambda_wn: float >= 0, default 2. Weight of the insignificant-length term of incorrect ones.
        lambda_we: float >= 0, default 5. Constant penalty of incorrect rollouts; also sets the
            schedule's scale: lambda_dyn starts at lambda_we / (pi/2).
        schedule: str, default "bingo". How lambda_dyn moves: "bingo" is the authors' slope rule
            (:class:`DynamicLambdaSchedule`); "constant" keeps lambda_dyn = lambda_we / (pi/2)
            (the authors' non-dynamic variant).
        slope_start_step: int >= 1, default 50. First training step after which the score slope
            is measured (the authors' ``slope_start_epoch``).
        slope_period: int >= 2, default 10. Number of most recent steps the slope is fitted on.
        slope_threshold: float, default 2.5. lambda_dyn turns to a penalty when the scaled slope
            is <= this (the scale maps the first measured slope to lambda_we / (pi/2)).
        penalty_step: float > 0, default 0.5. lambda_dyn = -penalty_step * k after k consecutive
            flat steps, floored at -2 lambda_we / (pi/2).
        anchor: str, default "first_seen". Where the reference counts N_insig_ref, N_sig_ref of
            r_ins = N_insig / N_insig_ref and r_sig = N_sig / N_sig_ref come from.
            "first_seen": the mean counts of the non-empty rollouts (correct or not) of the first
            group seen with the same prompt (keyed by a hash of the prompt token ids: verl's uid
            changes every step), kept and saved with verl's checkpoint. The anchor does not move
            with the policy, as the authors' frozen reference model: a rollout that compresses its
            answer below what the policy wrote at first sight earns more bonus, also when it is
            the only correct rollout of its group. On a prompt's first sight it is the group's own
            mean, so a batch of new prompts still gets a contrast.
            "group": the mean over the group's correct rollouts (else all), recomputed every step:
            the anchor moves with the policy (a lone correct rollout always gets r_ins = 1 and
            the full cos(1) bonus). The previous behaviour, no state.
        anchor_capacity: int >= 1, default 100000. Prompts "first_seen" keeps (least recently
            seen dropped first; ``credit/length_reward/anchor_evictions/count`` counts them, an
            evicted prompt is anchored again when next seen). About 150 bytes each in memory and
            in the checkpoint file; raise it above the number of distinct training prompts.
    """

    enabled: bool = False
    scorer: str = "surprisal"
    threshold: float = 0.5
    lambda_c: float = 5.0
    lambda_wn: float = 2.0
    lambda_we: float = 5.0
    schedule: str = "bingo"
    slope_start_step: int = 50
    slope_period: int = 10
    slope_threshold: float = 2.5
    penalty_step: float = 0.5
    anchor: str = "first_seen"
    anchor_capacity: int = 100_000

    def __post_init__(self):
        key = "credit.length_reward"
        if not isinstance(self.enabled, bool):
            raise ValueError(f"{key}.enabled must be true or false, got {self.enabled!r}")
        if not isinstance(self.scorer, str) or not _valid_scorer_spec(self.scorer):
            raise ValueError(
                f"{key}.scorer must be one of {', '.join(BUILTIN_SCORERS)} or an import path "
                f"'module.path:function', got {self.scorer!r}"
            )
        if not (is_number(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"{key}.threshold must be a number in [0, 1], got {self.threshold!r}")
        for name in ("lambda_c", "lambda_wn", "lambda_we"):
            value = getattr(self, name)
            if not (is_number(value) and value >= 0):
                raise ValueError(f"{key}.{name} must be a finite number >= 0, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{key}.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (is_int(self.slope_start_step) and self.slope_start_step >= 1):
            raise ValueError(f"{key}.slope_start_step must be an integer >= 1, got {self.slope_start_step!r}")
        if not (is_int(self.slope_period) and self.slope_period >= 2):
            raise ValueError(
                f"{key}.slope_period must be an integer >= 2 (a slope needs two points), got {self.slope_period!r}"
            )
        if not is_number(self.slope_threshold):
            raise ValueError(f"{key}.slope_threshold must be a finite number, got {self.slope_threshold!r}")
        if not (is_number(self.penalty_step) and self.penalty_step > 0):
            raise ValueError(f"{key}.penalty_step must be a finite number > 0, got {self.penalty_step!r}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"{key}.anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}")
        if not (is_int(self.anchor_capacity) and self.anchor_capacity >= 1):
            raise ValueError(f"{key}.anchor_capacity must be an integer >= 1, got {self.anchor_capacity!r}")


def _valid_scorer_spec(spec: str) -> bool:
    if ":" not in spec:
        return spec.isidentifier()
    module, _, attr = spec.partition(":")
    return all(p.isidentifier() for p in module.split(".")) and all(p.isidentifier() for p in attr.split("."))
