"""The ``credit:`` block of the trainer config: schema, defaults and validation, declared once.

The dataclasses below are the schema hydra composes (``verl_credit.main_ppo`` registers
:class:`CreditConfig` in hydra's ConfigStore), so an unknown key such as ``credit.ktae.alpah=2``
or a value of the wrong type fails at composition with the full key named. Range checks live in
``__post_init__`` and run when the trainer (or ``CreditConfig.from_dict``) builds the object.

    credit:
      correct_threshold: 0.0     # a rollout is "correct" when its outcome reward > this
      epsilon: 1.0e-6            # added to the group std in the outcome advantage (verl's value)
      ktae: {...}                # KTAE options, see verl_credit.core.ktae.KTAEParams
      length_reward: {...}       # Bingo length reward, see verl_credit.core.length_reward.LengthRewardConfig
      token_filter: {...}        # high-entropy token filter, see verl_credit.core.token_filter.TokenFilterConfig
      estimator_kwargs: {}       # free-form options handed to user-registered estimators
      import_modules: []         # modules imported before the run (they register estimators)
      max_dropped_fraction: 0.0  # share of a step's rollouts verl may drop (reward fn errors) before failing

Options that verl already has are read from verl, not repeated here:
``algorithm.adv_estimator`` selects the estimator, ``algorithm.norm_adv_by_std_in_grpo`` chooses
GRPO (z-score) or Dr.GRPO (centring) for the outcome advantage.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from verl_credit.core.batching import BatchingConfig, DiagnosticsConfig
from verl_credit.core.checks import is_number
from verl_credit.core.ktae import KTAEParams
from verl_credit.core.length_reward import LengthRewardConfig
from verl_credit.core.token_filter import TokenFilterConfig
from verl_credit.core.variance import VarianceParams
from verl_credit.scoring import CounterfactualConfig

__all__ = ["CreditConfig", "KTAEParams", "LengthRewardConfig", "TokenFilterConfig", "schema_key_problem"]


@dataclass
class CreditConfig:
    """Schema of the ``credit:`` block.

    Attributes:
        correct_threshold: a rollout counts as correct when its outcome reward is > this.
            Default 0.0 (binary 0/1 rewards; use e.g. 0.5 for rewards in [0, 1]).
        epsilon: added to the group std of the outcome advantage. Default 1e-6, as verl.
        ktae: KTAE options (``algorithm.adv_estimator=ktae``).
        length_reward: significance-aware length reward (Bingo), see
            ``verl_credit.core.length_reward.LengthRewardConfig``; off by default.
        token_weighting: "none" or "counterfactual": multiply the advantages of any base
            estimator (grpo or a plugin estimator) by counterfactual token weights. Default "none".
            ``algorithm.adv_estimator=counterfactual`` is grpo with this weighting.
        counterfactual: spans, weights and scoring of the counterfactual stage
            (``verl_credit.scoring.CounterfactualConfig``).
        batching: query-preserved mini-batches and the reward-balanced buffer
            (``verl_credit.core.batching.BatchingConfig``); both off by default.
        diagnostics: optional diagnostics, e.g. token flipping
            (``verl_credit.core.batching.DiagnosticsConfig``); off by default.
        token_filter: the high-entropy ("80/20") token filter after any estimator
            (``verl_credit.core.token_filter.TokenFilterConfig``): ``entropy_quantile`` (off by
            default; 0.2 is the paper's) and ``denominator`` ("all", TRL's aggregation, the default;
            or "kept"). See docs/token_filter.md.
        variance: the variance-weighted reward (``verl_credit.core.variance.VarianceParams``).
        estimator_kwargs: options for estimators registered by users, passed unchanged in
            ``EstimatorContext.config.estimator_kwargs``. Default {}.
        import_modules: dotted module names imported in every process that builds the trainer
            (the driver and verl's TaskRunner actor), so that estimators a user registers in
            their own module exist there. Default [].
        max_dropped_fraction: the share of a step's rollouts verl may lose before the advantage
            step (its agent loop drops a rollout whose reward function raised or returned a
            string: the group arrives short, padded) before the step fails. Default 0.0: fail on
            any loss, naming the reward function's error. 1.0 trains on what remains; the loss is
            logged as ``credit/rollouts_dropped/{count,fraction}`` in every case. Every rollout's
            reward is also checked to be a finite number (not configurable).
    """

    correct_threshold: float = 0.0
    epsilon: float = 1e-6
    ktae: KTAEParams = field(default_factory=KTAEParams)
    # feature sections: each declared in its own module, one field here
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    length_reward: LengthRewardConfig = field(default_factory=LengthRewardConfig)
    token_weighting: str = "none"
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    token_filter: TokenFilterConfig = field(default_factory=TokenFilterConfig)
    variance: VarianceParams = field(default_factory=VarianceParams)
    estimator_kwargs: dict[str, Any] = field(default_factory=dict)
    import_modules: list[str] = field(default_factory=list)
    # rollouts verl lost before the advantage step (verl_credit.integration.reward_guard)
    max_dropped_fraction: float = 0.0

    def __post_init__(self):
        if not is_number(self.correct_threshold):
            raise ValueError(f"credit.correct_threshold must be a finite number, got {self.correct_threshold!r}")
        if not (is_number(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"credit.epsilon must be a finite number > 0, got {self.epsilon!r}")
        if self.token_weighting not in ("none", "counterfactual"):
            raise ValueError(f"credit.token_weighting must be 'none' or 'counterfactual', got {self.token_weighting!r}")
        for module in self.import_modules:
            if not (isinstance(module, str) and all(part.isidentifier() for part in module.split("."))):
                raise ValueError(f"credit.import_modules entries must be dotted module names, got {module!r}")
        if not (is_number(self.max_dropped_fraction) and 0 <= self.max_dropped_fraction <= 1):
            raise ValueError(
                f"credit.max_dropped_fraction must be a number in [0, 1], got {self.max_dropped_fraction!r}"
            )
        for f in dataclasses.fields(self):
            section, value = _section_type(f), getattr(self, f.name)
            if section is not None and isinstance(value, dict):
                setattr(self, f.name, _build(section, value, f"credit.{f.name}"))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> CreditConfig:
        """Build and validate from a plain dict (e.g. ``OmegaConf.to_container(cfg.credit)``).

        Raises ValueError naming the full key (``credit.ktae.alpah``) for unknown keys.
        """
        return _build(cls, {} if values is None else values, "credit")


def _build(cls, values: dict[str, Any], prefix: str):
    """Instantiate dataclass ``cls`` from ``values``, recursing into nested dataclass sections.

    ValueError naming the full key: an unknown key (with the closest valid one), a section that is
    not a mapping (``+credit.ktae=5``), a value whose type is not the declared one."""
    if not isinstance(values, dict):
        raise ValueError(
            f"{prefix} must be a mapping of options ({prefix}.<option>=<value>), got {type(values).__name__} "
            f"{values!r}; valid options: {', '.join(f.name for f in dataclasses.fields(cls))}"
        )
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(unknown_key_message(cls, f"{prefix}.{unknown[0]}", prefix))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        section = _section_type(known[name])
        key = f"{prefix}.{name}"
        if section is not None:
            kwargs[name] = value if isinstance(value, section) else _build(section, value, key)
        else:
            _check_type(value, hints[name], key)
            kwargs[name] = value
    return cls(**kwargs)


def unknown_key_message(cls, key: str, prefix: str) -> str:
    """``unknown config key credit.ktae.alpah; did you mean credit.ktae.alpha? Valid keys under credit.ktae: ...``."""
    known = sorted(f.name for f in dataclasses.fields(cls))
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    valid = f"valid keys under {prefix}: {', '.join(known)}"
    if close:
        return f"unknown config key {key}; did you mean {prefix}.{close[0]}? {valid[0].upper()}{valid[1:]}"
    return f"unknown config key {key}; {valid}"


def schema_key_problem(key: str) -> str | None:
    """None when ``key`` (``credit.ktae.alpha``) names an option of the ``credit`` schema (or lies
    inside a free-form mapping such as ``credit.estimator_kwargs``), else the unknown-key message."""
    parts = key.split(".")
    if parts[0] != "credit":
        return None
    cls, prefix = CreditConfig, "credit"
    for part in parts[1:]:
        known = {f.name: f for f in dataclasses.fields(cls)}
        if part not in known:
            return unknown_key_message(cls, f"{prefix}.{part}", prefix)
        section = _section_type(known[part])
        if section is None:
            return None  # a leaf (or a free-form mapping / list under it)
        cls, prefix = section, f"{prefix}.{part}"
    return None


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return {list: "a list", dict: "a mapping", tuple: "a list"}.get(origin, str(hint))
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _type_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, list | tuple) and all(_type_ok(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _check_type(value, hint, key: str) -> None:
    if not _type_ok(value, hint):
        raise ValueError(f"{key} must be {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _section_type(f: dataclasses.Field):
    """The dataclass type of a nested section (a field whose default factory builds a dataclass)."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None
