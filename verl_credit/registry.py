"""The plugin's estimator registry.

Public API:
    register_estimator(name, fields=(), description="")  -- decorator for an estimator function.
    get_estimator(name) -> EstimatorSpec                  -- KeyError listing the valid names.
    list_estimators() -> list[str]
    compute_advantages(name, batch, ctx) -> CreditOutput  -- call, then check the result.

An estimator is ``fn(batch: CreditBatch, ctx: EstimatorContext) -> CreditOutput``. It is selected
in verl with ``algorithm.adv_estimator=<name>`` and run by the plugin trainer, which fetches the
fields it declares. Example::

    import verl_credit

    @verl_credit.register_estimator("length_penalised", fields=("old_log_probs",))
    def length_penalised(batch, ctx):
        z = verl_credit.core.groups.group_outcome_advantage(batch.scores, batch.groups)
        lengths = batch.response_mask.sum(-1, keepdim=True).clamp_min(1)
        return verl_credit.CreditOutput(advantages=z[:, None] * batch.response_mask / lengths.sqrt())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from verl_credit.batch import CreditBatch, CreditOutput, EstimatorContext

__all__ = ["EstimatorSpec", "register_estimator", "get_estimator", "list_estimators", "compute_advantages"]

# Names verl computes on its own hard-coded path: a plugin estimator may not take them.
RESERVED_NAMES = frozenset({"gae", "grpo"})
# Batch fields the trainer can fetch beyond the ones every estimator gets.
OPTIONAL_FIELDS = frozenset({"old_log_probs", "ref_log_prob", "prompts", "rollout_log_probs", "values"})
# Products of the extra forward stage an estimator can ask for (see integration/scoring_stage.py).
STAGE_PRODUCTS = frozenset({"counterfactual", "reference"})

EstimatorFn = Callable[[CreditBatch, EstimatorContext], CreditOutput]


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: its name, function, the optional batch fields it needs (subset of
    ``OPTIONAL_FIELDS``), the stage products it needs (subset of ``STAGE_PRODUCTS``: the trainer
    runs the extra forward stage and hands their fields over in ``batch.fields``) and a one-line
    description for ``verl-credit doctor``."""

    name: str
    fn: EstimatorFn
    fields: tuple[str, ...] = ()
    description: str = ""
    stage: tuple[str, ...] = ()


_REGISTRY: dict[str, EstimatorSpec] = {}


def register_estimator(name: str, fields: tuple[str, ...] = (), description: str = "", stage: tuple[str, ...] = ()):
    """Register ``fn(batch, ctx) -> CreditOutput`` under ``name`` (refuses a duplicate name)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"estimator name must be an identifier-like string, got {name!r}")
    if name in RESERVED_NAMES:
        raise ValueError(f"estimator name {name!r} is verl's own; choose another name")
    unknown = sorted(set(fields) - OPTIONAL_FIELDS)
    if unknown:
        raise ValueError(f"estimator {name!r} asks for unknown field {unknown[0]!r}; known: {sorted(OPTIONAL_FIELDS)}")
    unknown = sorted(set(stage) - STAGE_PRODUCTS)
    if unknown:
        raise ValueError(
            f"estimator {name!r} asks for unknown stage product {unknown[0]!r}; known: {sorted(STAGE_PRODUCTS)}"
        )

    def decorator(fn: EstimatorFn) -> EstimatorFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(
                f"estimator {name!r} is already registered to {existing.fn.__module__}.{existing.fn.__name__}"
            )
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = EstimatorSpec(name=name, fn=fn, fields=tuple(fields), description=doc, stage=tuple(stage))
        return fn

    return decorator


def _ensure_builtins() -> None:
    import verl_credit.estimators  # noqa: F401  (registers the built-in estimators)


def get_estimator(name: str) -> EstimatorSpec:
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown verl_credit estimator {name!r}; registered: {', '.join(list_estimators())}") from None


def list_estimators() -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY)


def compute_advantages(estimator: str | EstimatorSpec, batch: CreditBatch, ctx: EstimatorContext) -> CreditOutput:
    """Run an estimator (registered name or spec) and check its output: shape (B, T), finite;
    masked positions and padding rows are set to 0; ``returns`` defaults to the advantages."""
    spec = estimator if isinstance(estimator, EstimatorSpec) else get_estimator(estimator)
    name = spec.name
    out = spec.fn(batch, ctx)
    if not isinstance(out, CreditOutput):
        raise TypeError(f"estimator {name!r} returned {type(out).__name__}, expected verl_credit.CreditOutput")
    keep = batch.response_mask.to(torch.float32) * (~batch.groups.is_padding).unsqueeze(1)
    for attr in ("advantages", "returns", "token_weights"):
        value = getattr(out, attr)
        if value is None:
            continue
        if tuple(value.shape) != tuple(batch.responses.shape):
            raise ValueError(
                f"estimator {name!r} returned {attr} of shape {tuple(value.shape)}, "
                f"expected {tuple(batch.responses.shape)} (B, T)"
            )
        bad = ~torch.isfinite(value) & keep.bool()
        if bad.any():
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"estimator {name!r} returned a non-finite {attr} for rollout {row} (uid {batch.uids[row]!r})"
            )
        if attr != "token_weights":
            setattr(out, attr, torch.where(keep.bool(), value.float(), torch.zeros((), dtype=torch.float32)))
    if out.returns is None:
        out.returns = out.advantages
    return out
