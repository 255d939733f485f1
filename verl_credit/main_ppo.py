"""``python -m verl_credit.main_ppo``: verl's ``main_ppo`` with the plugin trainer and ``credit:``.

    python -m verl_credit.main_ppo algorithm.adv_estimator=ktae credit.ktae.top=0.5 ...
    VERL_CREDIT_DRY_RUN=1 python -m verl_credit.main_ppo ...   # compose, resolve, check; launch nothing

Composes ``verl_credit/conf/credit_trainer.yaml`` (verl's ``ppo_trainer`` + the typed ``credit``
schema, so an unknown ``credit.*`` key fails at composition), checks the run before Ray starts,
then runs verl's own ``main``. ``python -m verl.trainer.main_ppo`` with ``+credit.*`` options runs
the same checks and trainer (``verl_credit.integration.verl_hook``); only the typed schema is extra here.

Start-up checks (``verl_credit.integration.startup``): an unknown ``credit.*`` key on the command line
(the closest valid key named, before hydra composes), the ``credit`` block, the estimator name
(unknown: the registered ones and the closest), the trainer choice and the plugin trainer's checks,
the doctor's plugin check, token ids against the tokenizer, every row of the data files and the
prompts' lengths.

Dry run (``VERL_CREDIT_DRY_RUN=1``; the recipes' ``DRY_RUN=1``): those checks, verl's own
(``validate_config``: batch sizes, micro-batches, the actor config dataclass) and the custom reward
function's import; then the fully resolved config is printed as YAML and nothing is launched.
Missing data files are reported, not fatal (prepare the data after checking the recipe).
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore

from verl_credit.config import CreditConfig, schema_key_problem
from verl_credit.integration.startup import DRY_RUN_ENV, check_config, dry_run, dry_run_requested, plugin_checks

ConfigStore.instance().store(name="credit_schema", node=CreditConfig)

__all__ = [
    "DRY_RUN_ENV",
    "check_config",
    "check_credit_overrides",
    "dry_run",
    "dry_run_requested",
    "run",
    "main",
    "cli",
]


def check_credit_overrides(overrides: list[str]) -> None:
    """ValueError for a command-line override of a key the ``credit`` schema does not have, naming the
    closest valid key (``credit.ktae.alpah=2``: did you mean ``credit.ktae.alpha``?). Hydra would reject
    it too, but suggest appending it (``+credit.ktae.alpah=2``), which the schema refuses as well."""
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
        problem = schema_key_problem(key)
        if problem:
            raise ValueError(f"{arg}: {problem}")


def run(config) -> None:
    """Check the run (or dry-run it), then hand the composed config to verl's main_ppo."""
    if dry_run_requested():
        dry_run(config)
        return
    from verl.trainer import main_ppo as verl_main  # noqa: I001  (verl import loads the plugin hooks)

    plugin_checks(config)  # verl's main then runs its own validate_config and starts Ray
    verl_main.main.__wrapped__(config)


@hydra.main(config_path="conf", config_name="credit_trainer", version_base=None)
def main(config) -> None:
    run(config)


def cli() -> None:
    """``python -m verl_credit.main_ppo``: the unknown-key check of the overrides, then hydra's ``main``."""
    try:
        check_credit_overrides(sys.argv[1:])
    except ValueError as err:
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    main()


if __name__ == "__main__":
    cli()
