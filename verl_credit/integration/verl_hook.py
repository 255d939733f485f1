"""verl_credit's start-up inside verl's own entry point (``python -m verl.trainer.main_ppo``).

verl's ``main`` composes the config, then calls ``verl.utils.config.validate_config`` in the driver,
before ``ray.init``. ``verl_credit.plugin`` imports this module right after ``verl.utils.config``
(on every ``import verl``), and it wraps that function: the wrapper first runs
:func:`verl_credit.integration.startup.before_verl_validates` (the plugin trainer is chosen when the
config asks for a plugin estimator or a ``credit`` feature; a run that cannot work fails here, with
the fix; ``VERL_CREDIT_DRY_RUN=1`` prints the checked config and exits), then verl's own checks.
A run that asks nothing of verl_credit costs one registry lookup and is otherwise untouched.

The wrapper binds where verl's entry points look the function up (``from verl.utils.config import
validate_config`` at their import, which follows ``import verl``). It imports nothing heavy itself.
"""

from __future__ import annotations

import functools

import verl.utils.config as verl_config

__all__ = ["install"]


def _wrap(original):
    @functools.wraps(original)
    def validate_config(config, *args, **kwargs):
        from verl_credit.integration.startup import before_verl_validates

        before_verl_validates(config)
        return original(config, *args, **kwargs)

    validate_config.verl_credit_original = original
    return validate_config


def install() -> None:
    """Wrap ``verl.utils.config.validate_config`` once."""
    if getattr(verl_config.validate_config, "verl_credit_original", None) is None:
        verl_config.validate_config = _wrap(verl_config.validate_config)


install()
