"""``verl-credit``: the plugin's command line.

verl-credit doctor [--json]   check, in a fresh Python process, that verl loads the plugin.
verl-credit gym [--quick]     the credit gym: token-credit precision and learning on a tiny task.
verl-credit explain [...]     sample solutions on the CPU and write an HTML report of every
                              estimator's token-level credit (``verl-credit explain --help``).
verl-credit smoke [...]       real verl PPO steps of a tiny model on the CPU with an estimator
                              (``verl-credit smoke --help``; a correctness check, not training).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from verl_credit.diagnose import diagnose
from verl_credit.diagnose import plugins_policy_problem as plugins_policy_problem  # re-exported

# Runs in a fresh interpreter: verl must be imported first, exactly as a training process does.
_PROBE = r"""
import importlib.util, json, os, sys
report = {"errors": [], "plugins_policy": os.environ.get("VERL_USE_EXTERNAL_PLUGINS")}
spec = importlib.util.find_spec("verl_credit")
if spec is not None and spec.origin is None and spec.submodule_search_locations:  # a namespace package
    where = ", ".join(spec.submodule_search_locations)
    print(json.dumps({"errors": [
        f"`import verl_credit` finds the folder {where}, not the installed package: Python was started in a "
        "folder that holds a folder named verl_credit without an __init__.py (e.g. the parent of a checkout "
        "named verl_credit). Run from another folder (cd into the checkout, or anywhere else), or rename that folder"
    ]})); sys.exit(0)
try:
    import verl
    report["verl_version"] = verl.__version__
except Exception as err:
    print(json.dumps({"errors": [f"cannot import verl: {err!r}"]})); sys.exit(0)
report["plugin_loaded_by_entry_point"] = "verl_credit.plugin" in sys.modules
import verl.utils.config
report["start_up_hook"] = getattr(verl.utils.config.validate_config, "verl_credit_original", None) is not None
from importlib.metadata import entry_points
report["entry_points"] = sorted(f"{ep.name} = {ep.value}" for ep in entry_points(group="verl.plugins"))
try:
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
    report["trainer_modes"] = sorted(TRAINER_REGISTRY)
    import verl_credit
    report["plugin_estimators"] = verl_credit.list_estimators()
    report["stubs_in_verl_registry"] = sorted(
        n for n, fn in core_algos.ADV_ESTIMATOR_REGISTRY.items() if getattr(fn, "verl_credit_estimator", None)
    )
    report["verl_credit_version"] = verl_credit.__version__
except Exception as err:
    report["errors"].append(f"importing verl's V1 trainer failed: {err!r}")
print(json.dumps(report))
"""


def doctor(as_json: bool = False) -> int:
    """Print the probe's report; return 0 when the plugin is fully wired into verl, else 1."""
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"verl-credit doctor: the probe process failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return 1
    report = json.loads(lines[-1])
    problems = diagnose(report)
    report["problems"] = problems
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"verl               {report.get('verl_version', 'not importable')}")
        print(f"verl_credit        {report.get('verl_credit_version', '?')}")
        print(f"plugin loaded      {report.get('plugin_loaded_by_entry_point')} (entry point group verl.plugins)")
        print(f"estimators         {', '.join(report.get('plugin_estimators', [])) or '-'}")
        print(f"in verl registry   {', '.join(report.get('stubs_in_verl_registry', [])) or '-'}")
        print(f"trainer modes      {', '.join(report.get('trainer_modes', [])) or '-'}")
        print("status             " + ("OK" if not problems else "PROBLEMS"))
        for problem in problems:
            print(f"  - {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verl-credit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_doc = sub.add_parser("doctor", help="check that verl loads the plugin (fresh process)")
    p_doc.add_argument("--json", action="store_true", help="print the full report as JSON")
    from verl_credit.explain.options import add_arguments, config_from_args

    add_arguments(sub.add_parser("explain", help="HTML report of every estimator's credit on sampled solutions (CPU)"))
    p_gym = sub.add_parser("gym", help="credit gym: does an estimator find the tokens that matter? (CPU, minutes)")
    from verl_credit.gym.cli import add_arguments as gym_arguments

    gym_arguments(p_gym)
    from verl_credit.cpu.smoke import add_arguments as smoke_arguments

    smoke_arguments(sub.add_parser("smoke", help="real verl PPO steps of a tiny model on the CPU (minutes)"))
    args = parser.parse_args(argv)
    if args.command == "smoke":
        from verl_credit.cpu.smoke import main as smoke_main

        return smoke_main(args)
    if args.command == "gym":
        from verl_credit.gym.cli import run as gym_run

        gym_run(args)
        return 0
    if args.command == "doctor":
        return doctor(as_json=args.json)
    if args.command == "explain":
        from verl_credit.explain.run import main as explain_main

        return explain_main(config_from_args(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
