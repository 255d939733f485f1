"""``python -m verl_credit.main_ppo``: verl's ``main_ppo`` with the plugin trainer and ``credit:``.

    python -m verl_credit.main_ppo algorithm.adv_estimator=ktae credit.ktae.top=0.5 ...

Composes ``verl_credit/conf/credit_trainer.yaml`` (verl's ``ppo_trainer`` + the ``credit``
schema), checks the plugin's settings before Ray starts, then runs verl's own ``main``.
"""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore

from verl_credit.config import CreditConfig

ConfigStore.instance().store(name="credit_schema", node=CreditConfig)


def run(config) -> None:
    """Validate the plugin's settings, then hand the composed config to verl's main_ppo."""
    from verl.trainer import main_ppo as verl_main  # noqa: I001  (verl import loads the plugin hooks)

    from verl_credit.integration.trainer import validate_run_config

    validate_run_config(config)
    verl_main.main.__wrapped__(config)


@hydra.main(config_path="conf", config_name="credit_trainer", version_base=None)
def main(config) -> None:
    run(config)


if __name__ == "__main__":
    main()
