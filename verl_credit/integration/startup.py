"""Start-up of a verl run with verl_credit installed: which trainer runs, and every check before Ray.

Both entry points end here, in the driver, before ``ray.init``:
    python -m verl_credit.main_ppo ...      ``verl_credit.main_ppo.run`` calls :func:`check_config`;
    python -m verl.trainer.main_ppo ...     verl's ``main`` calls ``verl.utils.config.validate_config``,
                                            which ``verl_credit.integration.verl_hook`` wraps with
                                            :func:`before_verl_validates`.

Public API:
    plugin_requested(config) -> bool       does a verl config ask for anything of verl_credit? (cheap)
    plugin_features(config, credit) -> [str]   the settings that need the plugin trainer, as "key=value"
    select_trainer(config, features)       ``trainer.v1.trainer_mode`` sync -> credit when features ask for it
    check_estimator_name(config)           an unknown ``algorithm.adv_estimator``: the registered names and
                                           the closest match
    check_plugin_loading(config)           the doctor's check (``verl-credit doctor``), in this process
    check_data(config, credit, ...)        every row of ``data.train_files`` / ``val_files``, prompt lengths
                                           (``verl_credit.integration.startup_checks``)
    plugin_checks(config) -> CreditConfig  all of the above, in that order
    check_config(config) -> CreditConfig   plugin_checks, then verl's ``validate_config`` and the custom
                                           reward function's import (the dry run's checks)
    dry_run(config)                        check_config, then print the resolved config; launch nothing

Trainer choice: verl's stock trainer runs, untouched, unless the config asks for a plugin estimator
or a ``credit`` feature (:func:`plugin_features`); then ``trainer.v1.trainer_mode`` ``sync`` (verl's
default) becomes ``credit``. A run that cannot work fails here with the fix: the legacy trainer
(``trainer.use_v1=false``), another V1 mode (async), ``rollout.n < 2``, a sequence-level loss
(with a plugin estimator or the token filter), verl's entropy skipped (bypass mode) with the filter,
plugins disabled for verl's workers (``VERL_USE_EXTERNAL_PLUGINS``), data without what the run reads.

Nothing here imports verl at module level: the hook module imports this one only when verl's
``validate_config`` runs.
"""

from __future__ import annotations

import difflib
import os
import sys

from verl_credit.integration.startup_checks import (
    check_data,
    check_scorer_signature,
    check_token_ids,
    data_files,
    is_local,
    load_tokenizer,
)

__all__ = [
    "DRY_RUN_ENV",
    "dry_run_requested",
    "plugin_requested",
    "plugin_features",
    "select_trainer",
    "check_estimator_name",
    "check_plugin_loading",
    "check_data",
    "check_token_ids",
    "check_scorer_signature",
    "plugin_checks",
    "check_config",
    "dry_run",
    "before_verl_validates",
]

DRY_RUN_ENV = "VERL_CREDIT_DRY_RUN"
PLUGINS_ENV = "VERL_USE_EXTERNAL_PLUGINS"

_checked: list = []  # configs that went through plugin_checks in this process (verl's main then skips them)


def dry_run_requested() -> bool:
    return os.environ.get(DRY_RUN_ENV, "0").strip().lower() not in ("", "0", "false", "no")


def _log(message: str) -> None:
    print(f"[verl_credit] {message}", file=sys.stderr)


def _is_plugin_estimator_fn(fn) -> bool:
    return getattr(fn, "verl_credit_estimator", None) is not None


# ----------------------------------------------------------------------------- trainer choice


def plugin_requested(config) -> bool:
    """True when the config has a ``credit`` block, selects trainer mode ``credit``, or names an
    estimator that is not one of verl's own (a plugin one, a user one, or a typo). Cheap: a plain
    verl run answers False after one registry lookup and is left alone."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos

    if config.get("credit") is not None:
        return True
    if OmegaConf.select(config, "trainer.v1.trainer_mode") == "credit":
        return True
    fn = core_algos.ADV_ESTIMATOR_REGISTRY.get(str(config.algorithm.adv_estimator))
    return fn is None or _is_plugin_estimator_fn(fn)


def plugin_features(config, credit) -> list[str]:
    """The settings of ``config`` (validated ``credit`` block: ``credit``) that need the plugin trainer."""
    from verl_credit.registry import list_estimators

    name = str(config.algorithm.adv_estimator)
    wanted = [
        (f"algorithm.adv_estimator={name}", name in list_estimators()),
        (f"credit.token_weighting={credit.token_weighting}", credit.token_weighting != "none"),
        ("credit.length_reward.enabled=true", credit.length_reward.enabled),
        (
            f"credit.token_filter.entropy_quantile={credit.token_filter.entropy_quantile}",
            credit.token_filter.enabled,
        ),
        ("credit.batching.query_preserved=true", credit.batching.query_preserved),
        ("credit.batching.reward_balanced.enabled=true", credit.batching.reward_balanced.enabled),
        (
            f"credit.diagnostics.token_flip_every={credit.diagnostics.token_flip_every}",
            credit.diagnostics.token_flip_every > 0,
        ),
    ]
    return [setting for setting, on in wanted if on]


def select_trainer(config, features: list[str]) -> str:
    """Choose the trainer: with ``features``, verl's V1 mode ``sync`` becomes ``credit`` (set in
    ``config``); without, nothing changes. Returns the mode. ValueError with the fix when the run
    asks for features the chosen trainer cannot run (legacy trainer, an async V1 mode)."""
    from omegaconf import OmegaConf, open_dict

    from verl_credit.integration.verl_registry import TRAINER_MODE

    mode = OmegaConf.select(config, "trainer.v1.trainer_mode")
    if not features:
        return mode
    if not config.trainer.get("use_v1", False):
        raise ValueError(
            f"{features[0]} runs in verl's V1 trainer, but trainer.use_v1=false selects the legacy one "
            "(verl.trainer.main_ppo_v0), which cannot run verl_credit's features: set trainer.use_v1=true"
        )
    if mode == TRAINER_MODE:
        return mode
    if mode != "sync":
        raise ValueError(
            f"{features[0]} runs in verl_credit's trainer, which extends verl's sync trainer; "
            f"trainer.v1.trainer_mode={mode} cannot run it: set trainer.v1.trainer_mode=sync (verl_credit then "
            f"selects its own) or trainer.v1.trainer_mode={TRAINER_MODE}"
        )
    with open_dict(config):
        config.trainer.v1.trainer_mode = TRAINER_MODE
    _log(f"{', '.join(features)}: trainer.v1.trainer_mode=sync -> {TRAINER_MODE} (verl's sync trainer + verl_credit)")
    return TRAINER_MODE


# ----------------------------------------------------------------------------- estimator name


def registered_estimators() -> tuple[list[str], list[str]]:
    """(verl's estimator names, verl_credit's) as registered in this process."""
    from verl.trainer.ppo import core_algos

    from verl_credit.registry import list_estimators

    ours = list_estimators()
    verl = sorted(
        name
        for name, fn in core_algos.ADV_ESTIMATOR_REGISTRY.items()
        if not _is_plugin_estimator_fn(fn) and name not in ours
    )
    return verl, ours


def check_estimator_name(config) -> None:
    """ValueError unless ``algorithm.adv_estimator`` is registered with verl or verl_credit.

    Modules the run imports before the advantage step are imported first: ``credit.import_modules``
    (by :func:`~verl_credit.integration.trainer.credit_config_from`, before this), verl's
    ``VERL_USE_EXTERNAL_MODULES`` (by ``import verl``) and ``actor_rollout_ref.model.external_lib``."""
    from omegaconf import OmegaConf

    name = str(config.algorithm.adv_estimator)
    verl, ours = registered_estimators()
    if name in verl or name in ours:
        return
    external_lib = OmegaConf.select(config, "actor_rollout_ref.model.external_lib")
    if external_lib:
        import importlib

        libs = [external_lib] if isinstance(external_lib, str) else OmegaConf.to_container(external_lib)
        for lib in libs:
            try:
                importlib.import_module(str(lib))
            except ImportError as err:
                raise ValueError(f"actor_rollout_ref.model.external_lib: cannot import {lib!r}: {err}") from err
        verl, ours = registered_estimators()
        if name in verl or name in ours:
            return
    close = difflib.get_close_matches(name, verl + ours, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"algorithm.adv_estimator={name!r} is not a registered advantage estimator.{hint} "
        f"verl's: {', '.join(verl)}. verl_credit's: {', '.join(ours)}. "
        "A user estimator must be registered before the run starts: verl_credit.register_estimator in a module "
        "listed in credit.import_modules, or verl's register_adv_est in a module named by VERL_USE_EXTERNAL_MODULES"
    )


# ----------------------------------------------------------------------------- plugin loading


def check_plugin_loading(config) -> None:
    """The doctor's check (``verl_credit.diagnose.diagnose``), for the processes Ray will start.

    A fresh process loads verl_credit only through verl's entry point, so what decides it is
    visible from here: the installed verl version, the ``verl.plugins`` entry point, and
    ``VERL_USE_EXTERNAL_PLUGINS`` as the workers will see it (``ray_kwargs.ray_init.runtime_env.env_vars``
    overrides the driver's environment). RuntimeError listing the problems."""
    from importlib.metadata import entry_points

    import verl
    from omegaconf import OmegaConf

    from verl_credit.diagnose import diagnose

    policy = os.environ.get(PLUGINS_ENV)
    env_vars = OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env.env_vars")
    if env_vars is not None and env_vars.get(PLUGINS_ENV) is not None:
        policy = str(env_vars.get(PLUGINS_ENV))
    report = {
        "errors": [],
        "verl_version": verl.__version__,
        "entry_points": sorted(f"{ep.name} = {ep.value}" for ep in entry_points(group="verl.plugins")),
        "plugins_policy": policy,
    }
    problems = diagnose(report)
    if problems:
        raise RuntimeError(
            "verl would not load verl_credit in its TaskRunner and Ray workers (`verl-credit doctor` says more): "
            + "; ".join(problems)
        )


# ----------------------------------------------------------------------------- all checks


def plugin_checks(config, data: bool = True):
    """verl_credit's start-up checks of a full trainer config (in this order): the ``credit`` block
    (every key and type), the estimator name, the trainer choice (may set
    ``trainer.v1.trainer_mode=credit``), the plugin trainer's own checks and a user scorer's signature,
    the doctor's check when the plugin trainer runs, ``credit.*`` token ids against the model's
    tokenizer (loaded offline; skipped with a note when it cannot be), every row of the data and the
    prompts' lengths. Returns the validated ``credit`` block."""
    from verl_credit.integration.trainer import credit_config_from, validate_run_config
    from verl_credit.integration.verl_registry import TRAINER_MODE

    credit = credit_config_from(config)
    check_estimator_name(config)
    features = plugin_features(config, credit)
    mode = select_trainer(config, features)
    if not features and config.get("credit") is not None and mode != TRAINER_MODE:
        _log("credit.* is set but no verl_credit feature is on: verl's stock trainer runs and ignores it")
    credit = validate_run_config(config)
    check_scorer_signature(credit)
    if mode == TRAINER_MODE:
        check_plugin_loading(config)
    tokenizer, note = load_tokenizer(config)
    if tokenizer is not None:
        check_token_ids(credit, tokenizer)
    elif credit.counterfactual.placeholder_token_id is not None or credit.ktae.ignore_token_ids:
        _log(f"note: credit.* token ids not checked against the vocabulary: {note}")
    if data:
        check_data(config, credit, tokenizer, note)
    _checked.append(config)
    return credit


def check_config(config):
    """All start-up checks that need no cluster; returns the validated ``credit`` block."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy  # noqa: I001
    from verl.utils.config import validate_config
    from verl.utils.import_utils import load_extern_object

    credit = plugin_checks(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    reward_fn = config.reward.get("custom_reward_function") or {}
    if reward_fn.get("path"):
        load_extern_object(module_path=reward_fn.path, object_name=reward_fn.name)
    return credit


def dry_run(config) -> None:
    """Check ``config`` and print it resolved; no Ray, no model (only its tokenizer, offline)."""
    from omegaconf import OmegaConf

    check_config(config)
    print(OmegaConf.to_yaml(config, resolve=True))
    for key in ("train_files", "val_files"):
        for path in data_files(config, key):
            if not is_local(path):
                what = "is not a local file: not checked" if "://" in path else "does not exist yet"
                print(f"[verl_credit dry run] note: data.{key} {path} {what}", file=sys.stderr)
    print("[verl_credit dry run] config composed, resolved and validated; nothing launched", file=sys.stderr)


def was_checked(config) -> bool:
    return any(c is config for c in _checked)


def before_verl_validates(config) -> None:
    """Called by the wrapped ``verl.utils.config.validate_config`` before verl's own checks.

    A config already checked here passes through. ``VERL_CREDIT_DRY_RUN=1``: the dry run, then exit 0
    (verl's ``main`` would start Ray next). Otherwise, when the config asks for anything of
    verl_credit (:func:`plugin_requested`), :func:`plugin_checks`; a plain verl run is left alone."""
    if was_checked(config):
        return
    if dry_run_requested():
        dry_run(config)
        raise SystemExit(0)
    if plugin_requested(config):
        plugin_checks(config)
