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
