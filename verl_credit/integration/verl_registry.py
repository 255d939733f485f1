"""Register every plugin estimator name in verl's own estimator registry.

verl's stock path (``ray_trainer.compute_advantage``) only gives an estimator the token rewards,
mask and uid; plugin estimators need more and run in :class:`CreditPPOTrainer`. The stub
registered here makes a run that reaches verl's stock path with a plugin name fail at once with
the fix, instead of an unknown-estimator error or a silent fallback.
"""

from __future__ import annotations

from verl.trainer.ppo import core_algos

from verl_credit.registry import list_estimators

TRAINER_MODE = "credit"


def require_plugin_trainer(config, feature: str, group_reason: str | None = None) -> None:
    """Start-up check shared by every plugin feature: ValueError unless the run uses the plugin
    trainer (``trainer.use_v1=true``, ``trainer.v1.trainer_mode=credit``) and, when ``group_reason``
    is given, ``actor_rollout_ref.rollout.n >= 2``. ``feature`` names the setting that needs it."""
    if not config.trainer.get("use_v1", False):
        raise ValueError(f"{feature} needs the V1 trainer: set trainer.use_v1=true")
    mode = config.trainer.v1.trainer_mode
    if mode != TRAINER_MODE:
        raise ValueError(
            f"{feature} runs in the plugin trainer: set trainer.v1.trainer_mode={TRAINER_MODE} "
            f"(got {mode!r}), or launch with `python -m verl_credit.main_ppo`"
        )
    n = config.actor_rollout_ref.rollout.n
    if group_reason is not None and n < 2:
        raise ValueError(f"{feature} {group_reason}: actor_rollout_ref.rollout.n must be >= 2, got {n}")


def _stub_for(name: str):
    def plugin_estimator_stub(*args, **kwargs):
        raise RuntimeError(
            f"algorithm.adv_estimator={name} is a verl_credit estimator and runs only in the plugin trainer: "
            f"launch with `python -m verl_credit.main_ppo` (or set trainer.use_v1=true and "
            f"trainer.v1.trainer_mode={TRAINER_MODE}). verl's stock trainer cannot give it the response ids."
        )

    plugin_estimator_stub.verl_credit_estimator = name
    return plugin_estimator_stub


def register_estimator_stubs() -> list[str]:
    """Register a stub per plugin estimator name that verl does not already own; return them."""
    registered = []
    for name in list_estimators():
        existing = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        if existing is not None:
            if getattr(existing, "verl_credit_estimator", None) == name:
                continue
            raise ValueError(f"verl already has an advantage estimator named {name!r}; rename the plugin estimator")
        core_algos.register_adv_est(name)(_stub_for(name))
        registered.append(name)
    return registered


register_estimator_stubs()
