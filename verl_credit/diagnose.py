"""The doctor's diagnosis: what keeps verl from loading and running verl_credit.

Public API:
    diagnose(report)                  -- the problems found in a report of the installation, one line each.
    plugins_policy_problem(policy)    -- why ``VERL_USE_EXTERNAL_PLUGINS=policy`` keeps verl_credit out, or None.

Used by ``verl-credit doctor`` (:mod:`verl_credit.cli`, on a report from a fresh process) and by the
start-up check (:func:`verl_credit.integration.startup.check_plugin_loading`, on what the driver
sees), so neither imports the other. Pure Python: imports neither verl nor torch.
"""

from __future__ import annotations

__all__ = ["diagnose", "plugins_policy_problem"]


def plugins_policy_problem(policy: str | None) -> str | None:
    """Why ``VERL_USE_EXTERNAL_PLUGINS=policy`` keeps verl from loading verl_credit, or None.

    verl's rule (``verl/__init__.py``): unset or ``auto`` loads every ``verl.plugins`` entry point,
    ``none`` loads none, a comma-separated list loads only the entry points it names."""
    value = (policy or "auto").strip().lower()
    if value == "auto":
        return None
    if value == "none":
        return (
            "VERL_USE_EXTERNAL_PLUGINS=none: verl loads no plugin, so verl_credit is missing in verl's TaskRunner and "
            "Ray workers; unset it, or list verl_credit (VERL_USE_EXTERNAL_PLUGINS=verl_credit)"
        )
    if "verl_credit" not in {name.strip() for name in value.split(",")}:
        return (
            f"VERL_USE_EXTERNAL_PLUGINS={policy} does not list verl_credit, so verl does not load it in its "
            f"TaskRunner and Ray workers; add it: VERL_USE_EXTERNAL_PLUGINS={policy},verl_credit"
        )
    return None


def diagnose(report: dict) -> list[str]:
    """The problems that keep verl from running verl_credit, one line each (empty: none).

    ``report`` holds what is known, every key optional (a check whose key is absent is skipped):
    ``errors`` (list of str, taken over as they are), ``verl_version``, ``entry_points`` (the
    ``verl.plugins`` entry points, "name = value"), ``plugins_policy`` (``VERL_USE_EXTERNAL_PLUGINS``
    or None), ``plugin_loaded_by_entry_point``, ``start_up_hook`` (bools), ``trainer_modes``,
    ``plugin_estimators``, ``stubs_in_verl_registry`` (lists of names). ``verl-credit doctor``
    fills all of them in a fresh process; the start-up check fills those the driver can see.
    """
    problems = list(report.get("errors", []))
    if "verl_version" in report:
        major_minor = tuple(int(p) for p in report["verl_version"].split(".")[:2] if p.isdigit())
        if major_minor != (0, 9):
            problems.append(f"verl {report['verl_version']} is installed; verl_credit supports verl >=0.9.1,<0.10")
    if report.get("entry_points") is not None and not any("verl_credit" in e for e in report["entry_points"]):
        problems.append("no 'verl.plugins' entry point for verl_credit: reinstall with `pip install -e .`")
    policy_problem = plugins_policy_problem(report.get("plugins_policy"))
    if policy_problem:
        problems.append(policy_problem)
    if report.get("plugin_loaded_by_entry_point") is False:
        problems.append(
            "`import verl` did not load verl_credit.plugin (VERL_USE_EXTERNAL_PLUGINS=none? "
            "run `python -c 'import verl_credit.plugin'` to see the error)"
        )
    if report.get("start_up_hook") is False:
        problems.append(
            "verl's validate_config is not wrapped: `python -m verl.trainer.main_ppo` would neither choose the plugin "
            "trainer nor run verl_credit's start-up checks"
        )
    if "trainer_modes" in report and "credit" not in report["trainer_modes"]:
        problems.append("trainer mode 'credit' is not registered in verl's V1 trainer registry")
    missing = sorted(set(report.get("plugin_estimators", [])) - set(report.get("stubs_in_verl_registry", [])))
    if missing:
        problems.append(f"estimators not registered in verl's register_adv_est: {', '.join(missing)}")
    return problems
