"""``CreditPPOTrainer``: verl's V1 sync trainer that runs verl_credit estimators.

Registered as trainer mode ``credit`` (``trainer.v1.trainer_mode=credit``; ``verl_credit.main_ppo``
sets it). Each feature is a mixin in its own module that overrides one verl method and calls
``super()``; the class below only lists them. ``PluginAdvantageMixin`` comes last: a plugin
estimator name is computed by :func:`compute_plugin_advantage`, any other name (gae, grpo, ...)
goes to verl unchanged.

Start-up checks (:func:`validate_run_config`, also run by ``verl_credit.main_ppo`` before Ray):
    - the ``credit`` block is valid (unknown keys and bad values named);
    - a plugin estimator needs ``trainer.use_v1=true``, ``trainer.v1.trainer_mode=credit`` and
      ``actor_rollout_ref.rollout.n >= 2`` (it compares the rollouts of one prompt).
"""

from __future__ import annotations

import importlib

from omegaconf import OmegaConf, open_dict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_credit.batch import EstimatorContext
from verl_credit.config import CreditConfig
from verl_credit.integration.tq_batch import compute_plugin_advantage
from verl_credit.integration.verl_registry import TRAINER_MODE, register_estimator_stubs
from verl_credit.registry import get_estimator, list_estimators

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


def validate_run_config(config) -> CreditConfig:
    """Start-up checks of a full trainer config; returns the validated ``credit`` block."""
    credit = credit_config_from(config)
    name = config.algorithm.adv_estimator
    if name in list_estimators():
        if not config.trainer.get("use_v1", False):
            raise ValueError(f"algorithm.adv_estimator={name} needs the V1 trainer: set trainer.use_v1=true")
        mode = config.trainer.v1.trainer_mode
        if mode != TRAINER_MODE:
            raise ValueError(
                f"algorithm.adv_estimator={name} runs in the plugin trainer: set trainer.v1.trainer_mode="
                f"{TRAINER_MODE} (got {mode!r}), or launch with `python -m verl_credit.main_ppo`"
            )
        n = config.actor_rollout_ref.rollout.n
        if n < 2:
            raise ValueError(
                f"algorithm.adv_estimator={name} compares the rollouts of one prompt: "
                f"actor_rollout_ref.rollout.n must be >= 2, got {n}"
            )
    return credit


class PluginAdvantageMixin:
    """``_compute_advantage``: plugin estimators here, everything else to verl."""

    def _credit_context(self) -> EstimatorContext:
        tokenizer = getattr(self, "tokenizer", None)
        special = {getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)}
        return EstimatorContext(
            config=self.credit_config,
            norm_adv_by_std=bool(self.config.algorithm.get("norm_adv_by_std_in_grpo", True)),
            special_token_ids=tuple(sorted(t for t in special if isinstance(t, int))),
            global_step=int(getattr(self, "global_steps", 0) or 0),
        )

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        name = self.config.algorithm.adv_estimator
        if name not in list_estimators():
            return super()._compute_advantage(batch, metrics)
        return compute_plugin_advantage(
            self.config,
            batch,
            get_estimator(name),
            self._credit_context(),
            metrics,
            kl_ctrl=getattr(self, "kl_ctrl_in_reward", None),
        )


class CreditPPOTrainer(PluginAdvantageMixin, PPOTrainerSync):
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
