"""``CreditPPOTrainer``: verl's V1 sync trainer that runs verl_credit estimators.

Registered as trainer mode ``credit`` (``trainer.v1.trainer_mode=credit``; ``verl_credit.main_ppo``
sets it). Each feature is a mixin in its own module that overrides one verl method and calls
``super()``; the class below only lists them. ``RewardGuardMixin`` checks every step's rewards
(finite numbers; rollouts verl dropped) before any feature reads them. ``ScoringStageMixin`` runs before
``LengthRewardMixin`` (the length reward's ``counterfactual`` scorer reads the stage's output).
``PluginAdvantageMixin`` comes last: a plugin estimator name is computed by
:func:`compute_plugin_advantage`, any other name (gae, grpo, ...) goes to verl unchanged.
``TokenFilterMixin`` comes right after ``AdvantageDumpMixin``: it filters the advantages of whatever
ran below it (any estimator, the counterfactual weights, the length reward), and the dump records
what verl trains on, after the filter.

Start-up checks (:func:`validate_run_config`, also run by ``verl_credit.main_ppo`` before Ray):
    - the ``credit`` block is valid (unknown keys and bad values named);
    - the high-entropy token filter's checks (:func:`validate_token_filter_run`);
    - a plugin estimator needs ``trainer.use_v1=true``, ``trainer.v1.trainer_mode=credit`` and
      ``actor_rollout_ref.rollout.n >= 2`` (it compares the rollouts of one prompt).
"""

from __future__ import annotations

import importlib

from omegaconf import OmegaConf, open_dict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_credit.batch import EstimatorContext, special_token_ids
from verl_credit.config import CreditConfig
from verl_credit.estimators import GRPO_SPEC
from verl_credit.integration.batching import QueryPreservedBatchingMixin, check_batching_config
from verl_credit.integration.buffer import RewardBalancedBufferMixin
from verl_credit.integration.dump import AdvantageDumpMixin
from verl_credit.integration.length_reward import LengthRewardMixin, validate_length_reward_run
from verl_credit.integration.reward_guard import RewardGuardMixin
from verl_credit.integration.scoring_stage import ScoringStageMixin
from verl_credit.integration.token_filter import TokenFilterMixin, validate_token_filter_run
from verl_credit.integration.token_flip import TokenFlipDiagnosticMixin
from verl_credit.integration.tq_batch import compute_plugin_advantage
from verl_credit.integration.verl_registry import TRAINER_MODE, register_estimator_stubs, require_plugin_trainer
from verl_credit.registry import EstimatorSpec, get_estimator, list_estimators
from verl_credit.weighting import weighting_active

# policy losses that use sequence-level ratios or advantages: token-level credit does not apply
SEQUENCE_LEVEL_LOSSES = ("gspo", "geo_mean")

__all__ = ["CreditPPOTrainer", "TRAINER_MODE", "credit_config_from", "validate_run_config", "register_trainer_mode"]


def credit_config_from(config) -> CreditConfig:
    """The validated ``credit`` block of a trainer config (defaults when the block is absent)."""
    block = config.get("credit", None)
    values = OmegaConf.to_container(block, resolve=True) if block is not None else {}
    credit = CreditConfig.from_dict(values)
    for module in credit.import_modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"credit.import_modules: cannot import {module!r}: {err}") from err
    return credit


def plugin_spec(name: str, token_weighting: str) -> EstimatorSpec | None:
    """The estimator the plugin computes for ``algorithm.adv_estimator=name``: a registered one, or
    verl's grpo numbers when counterfactual weights go on top; None leaves the step to verl."""
    if name in list_estimators():
        return get_estimator(name)
    if name == "grpo" and weighting_active(name, token_weighting):
        return GRPO_SPEC
    return None


def validate_run_config(config) -> CreditConfig:
    """Start-up checks of a full trainer config; returns the validated ``credit`` block."""
    credit = credit_config_from(config)
    validate_length_reward_run(config, credit)
    validate_token_filter_run(config, credit)
    check_batching_config(config, credit)
    name = config.algorithm.adv_estimator
    spec = plugin_spec(name, credit.token_weighting)
    if spec is None and weighting_active(name, credit.token_weighting):
        raise ValueError(
            f"credit.token_weighting=counterfactual works over grpo or a verl_credit estimator, "
            f"not algorithm.adv_estimator={name}"
        )
    if spec is not None:
        require_plugin_trainer(config, f"algorithm.adv_estimator={name}", "compares the rollouts of one prompt")
        loss_mode = config.actor_rollout_ref.actor.policy_loss.get("loss_mode", "vanilla")
        if loss_mode in SEQUENCE_LEVEL_LOSSES:
            raise ValueError(
                f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode} is sequence-level; verl_credit's "
                "token-level advantages and weights need a token-level loss (e.g. vanilla)"
            )
    return credit


class PluginAdvantageMixin:
    """``_compute_advantage``: plugin estimators here, everything else to verl."""

    def _credit_context(self) -> EstimatorContext:
        return EstimatorContext(
            config=self.credit_config,
            norm_adv_by_std=bool(self.config.algorithm.get("norm_adv_by_std_in_grpo", True)),
            special_token_ids=special_token_ids(getattr(self, "tokenizer", None)),
            global_step=int(getattr(self, "global_steps", 0) or 0),
        )

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        name = self.config.algorithm.adv_estimator
        weighting = weighting_active(name, self.credit_config.token_weighting)
        spec = plugin_spec(name, self.credit_config.token_weighting)
        if spec is None:
            return super()._compute_advantage(batch, metrics)
        return compute_plugin_advantage(
            self.config,
            batch,
            spec,
            self._credit_context(),
            metrics,
            kl_ctrl=getattr(self, "kl_ctrl_in_reward", None),
            weighting=self.credit_config.counterfactual if weighting else None,
        )


class CreditPPOTrainer(
    AdvantageDumpMixin,
    TokenFilterMixin,
    RewardGuardMixin,
    QueryPreservedBatchingMixin,
    RewardBalancedBufferMixin,
    TokenFlipDiagnosticMixin,
    ScoringStageMixin,
    LengthRewardMixin,
    PluginAdvantageMixin,
    PPOTrainerSync,
):
    """verl's sync trainer plus verl_credit's features (see the module docstring)."""

    def __init__(self, config):
        self.credit_config = validate_run_config(config)
        with open_dict(config):  # verl tests `trainer_mode == "sync"` by name in several places
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config)
        register_estimator_stubs()  # names registered after verl's core_algos was imported


def register_trainer_mode() -> None:
    """Register :class:`CreditPPOTrainer` as trainer mode ``credit`` (idempotent)."""
    if TRAINER_REGISTRY.get(TRAINER_MODE) is not CreditPPOTrainer:
        register_trainer(TRAINER_MODE)(CreditPPOTrainer)


register_trainer_mode()
