"""``python -m verl_credit.main_ppo``: verl's ``main_ppo`` with the plugin trainer and ``credit:``.

    python -m verl_credit.main_ppo algorithm.adv_estimator=ktae credit.ktae.top=0.5 ...
    VERL_CREDIT_DRY_RUN=1 python -m verl_credit.main_ppo ...   # compose, resolve, check; launch nothing

Composes ``verl_credit/conf/credit_trainer.yaml`` (verl's ``ppo_trainer`` + the ``credit``
schema), checks the plugin's settings before Ray starts, then runs verl's own ``main``.

Dry run (``VERL_CREDIT_DRY_RUN=1``; the recipes' ``DRY_RUN=1``): every check that needs no
cluster, i.e. the plugin's (``validate_run_config``), verl's own (``validate_config``: batch sizes,
micro-batches, the actor config dataclass) and the custom reward function's import; then the
fully resolved config is printed as YAML and nothing is launched. Missing data files are reported,
not fatal (prepare the data after checking the recipe).
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.config_store import ConfigStore

from verl_credit.config import CreditConfig

ConfigStore.instance().store(name="credit_schema", node=CreditConfig)

DRY_RUN_ENV = "VERL_CREDIT_DRY_RUN"


def dry_run_requested() -> bool:
    return os.environ.get(DRY_RUN_ENV, "0").strip().lower() not in ("", "0", "false", "no")


def check_config(config) -> CreditConfig:
    """All start-up checks that need no cluster; returns the validated ``credit`` block."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy  # noqa: I001
    from verl.utils.config import validate_config
    from verl.utils.import_utils import load_extern_object

    from verl_credit.integration.trainer import validate_run_config

    credit = validate_run_config(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    reward_fn = config.reward.get("custom_reward_function") or {}
    if reward_fn.get("path"):
        load_extern_object(module_path=reward_fn.path, object_name=reward_fn.name)
    return credit


def dry_run(config) -> None:
    """Check ``config`` and print it resolved; no Ray, no model, no data loading."""
    from omegaconf import OmegaConf

    check_config(config)
    text = OmegaConf.to_yaml(config, resolve=True)
    print(text)
    for key in ("train_files", "val_files"):
        files = config.data.get(key)
        files = [files] if isinstance(files, str) else list(files or [])
        for path in files:
            if "://" not in str(path) and not os.path.exists(str(path)):
                print(f"[verl_credit dry run] note: data.{key} {path} does not exist yet", file=sys.stderr)
    print("[verl_credit dry run] config composed, resolved and validated; nothing launched", file=sys.stderr)


def run(config) -> None:
    """Validate the plugin's settings, then hand the composed config to verl's main_ppo."""
    if dry_run_requested():
        dry_run(config)
        return
    from verl.trainer import main_ppo as verl_main  # noqa: I001  (verl import loads the plugin hooks)

    from verl_credit.integration.trainer import validate_run_config

    validate_run_config(config)
    verl_main.main.__wrapped__(config)


@hydra.main(config_path="conf", config_name="credit_trainer", version_base=None)
def main(config) -> None:
    run(config)


if __name__ == "__main__":
    main()
