"""Significance scorers: where the per-token significance s_it of the length reward comes from.

Public API:
    ScorerInputs, SignificanceScorer   -- what a significance scorer receives / declares.
    significance_scorer(fields, normalize, name, stage)  -- decorator: a function -> SignificanceScorer.
    register_scorer, get_scorer, list_scorers            -- the registry (refuses a duplicate name,
                                                            a failed lookup lists the valid names).
    resolve_scorer(spec)               -- a registered name or ``module.path:function`` (importlib).
    run_scorer(scorer, inputs)         -- call it and check its output: FloatTensor[B, T] float64.
    BUILTIN_SCORERS                    -- the registered built-in names.

Notation: B rollouts, T response positions. A scorer maps ``ScorerInputs`` to s: FloatTensor[B, T],
higher = more significant; only valid positions (``response_mask`` == 1) are read. Built-ins:

    surprisal:       s_it = -log pi_old(o_it)           (``old_log_probs``; normalised per response)
    ktae:            s_it = |K(o_it)|                   (KTAE's key-token value; normalised per response)
    counterfactual:  s_it = I_hat of the span holding t (0 outside measured spans; already in [0, 1])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from verl_credit.core.counterfactual import STAGE_FIELDS, token_significance
from verl_credit.core.groups import GroupIndex
from verl_credit.core.ktae import KTAEParams, key_token_values

__all__ = [
    "BUILTIN_SCORERS",
    "SCORER_STAGES",
    "ScorerFn",
    "ScorerInputs",
    "SignificanceScorer",
    "get_scorer",
    "list_scorers",
    "register_scorer",
    "resolve_scorer",
    "run_scorer",
    "significance_scorer",
]

SCORER_STAGES = (None, "counterfactual")


@dataclass(frozen=True)
class ScorerInputs:
    """What a significance scorer receives.

    Attributes:
        response_mask: LongTensor[B, T], 1 on valid response tokens.
        fields: the batch fields the scorer declared, name -> Tensor[B, ...]: response-aligned
            ones right-padded to [B, T], e.g. ``responses`` (LongTensor), ``old_log_probs``
            (FloatTensor); a scorer with ``stage="counterfactual"`` also gets the stage's per-rollout
            fields ``credit_cf_scores`` [B, S+1], ``credit_cf_spans`` [B, S, 2], ``credit_cf_answer`` [B, 2].
        correct: BoolTensor[B], outcome reward > ``credit.correct_threshold``.
        groups: GroupIndex of the batch (group id per row, -1 for padding rows).
        ktae_params: KTAE options (the ``ktae`` scorer reads them), ignore ids already resolved.
        tokenizer: the trainer's tokenizer or None (a scorer working on text decodes with it).
    """

    response_mask: torch.Tensor
    fields: Mapping[str, torch.Tensor]
    correct: torch.Tensor
    groups: GroupIndex
    ktae_params: KTAEParams = field(default_factory=KTAEParams)
    tokenizer: Any = None


ScorerFn = Callable[[ScorerInputs], torch.Tensor]


@dataclass(frozen=True)
class SignificanceScorer:
    """A significance scorer: ``fn(inputs) -> FloatTensor[B, T]``, higher = more significant.

    Attributes:
        name: the value of ``credit.length_reward.scorer`` that selects it.
        fn: the scoring function; only valid positions of its output are read (they must be finite).
        fields: TransferQueue fields it needs, each a response-aligned Tensor[B, T]
            (e.g. ``("old_log_probs",)``); the trainer fetches them into ``inputs.fields``.
        normalize: min-max normalise the scores per response before thresholding (True), or
            threshold them as they are (False: the scorer already returns values in [0, 1]).
        stage: None, or "counterfactual": the trainer runs the counterfactual scoring stage on
            every rollout of a group with >= 2 rollouts before the shaping, and adds the stage's
            fields (``core.counterfactual.STAGE_FIELDS``) to ``inputs.fields``.
    """

    name: str
    fn: ScorerFn
    fields: tuple[str, ...] = ()
    normalize: bool = True
    stage: str | None = None

    def __post_init__(self):
        if self.stage not in SCORER_STAGES:
            raise ValueError(
                f"significance scorer {self.name!r}: stage must be one of {SCORER_STAGES}, got {self.stage!r}"
            )

    @property
    def all_fields(self) -> tuple[str, ...]:
        """``fields`` plus the stage's fields when the scorer asks for a stage."""
        extra = STAGE_FIELDS if self.stage == "counterfactual" else ()
        return tuple(dict.fromkeys([*self.fields, *extra]))


def significance_scorer(
    fields: Sequence[str] = ("responses",), normalize: bool = True, name: str | None = None, stage: str | None = None
):
    """Decorator for a user scorer, selected with ``credit.length_reward.scorer=my_pkg.module:function``.

    Put ``@significance_scorer(fields=("responses",))`` over ``def my_scorer(inputs: ScorerInputs)``
    returning FloatTensor[B, T] (higher = more significant); ``inputs.tokenizer`` decodes the ids
    for a text model such as LLMLingua-2. ``normalize=False`` if the scores already lie in [0, 1];
    ``stage="counterfactual"`` to receive the counterfactual scoring stage's span scores as well.
    """
    fields = tuple(fields)
    if not all(isinstance(f, str) and f for f in fields):
        raise ValueError(f"significance_scorer fields must be non-empty field names, got {fields!r}")

    def wrap(fn: ScorerFn) -> SignificanceScorer:
        return SignificanceScorer(
            name=name or getattr(fn, "__name__", "user"), fn=fn, fields=fields, normalize=normalize, stage=stage
        )

    return wrap


_SCORERS: dict[str, SignificanceScorer] = {}


def register_scorer(scorer: SignificanceScorer) -> SignificanceScorer:
    """Register a scorer under ``scorer.name`` (refuses a duplicate name)."""
    if not scorer.name.isidentifier():
        raise ValueError(f"scorer name must be an identifier, got {scorer.name!r}")
    if scorer.name in _SCORERS:
        raise ValueError(f"significance scorer {scorer.name!r} is already registered")
    _SCORERS[scorer.name] = scorer
    return scorer


def get_scorer(name: str) -> SignificanceScorer:
    """The registered scorer ``name``; ValueError listing the valid names otherwise."""
    if name not in _SCORERS:
        raise ValueError(
            f"credit.length_reward.scorer: unknown scorer {name!r}; valid: {', '.join(list_scorers())} "
            "or an import path 'module.path:function'"
        )
    return _SCORERS[name]


def list_scorers() -> list[str]:
    return sorted(_SCORERS)


def resolve_scorer(spec: str) -> SignificanceScorer:
    """A registered name, or ``module.path:function`` imported with importlib (never eval).

    The imported object may be a :class:`SignificanceScorer` (from ``significance_scorer``) or a
    plain callable; a plain callable may carry ``fields``, ``normalize`` and ``stage`` attributes
    (defaults ``("responses",)``, True, None). Raises ValueError naming ``credit.length_reward.scorer``.
    """
    if ":" not in spec:
        return get_scorer(spec)
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"credit.length_reward.scorer={spec}: cannot import module {module_name!r}: {err}") from err
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"credit.length_reward.scorer={spec}: {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, attr)
    if isinstance(obj, SignificanceScorer):
        return obj
    if not callable(obj):
        raise ValueError(
            f"credit.length_reward.scorer={spec}: expected a function (ScorerInputs) -> Tensor[B, T], "
            f"got {type(obj).__name__}"
        )
    fields = getattr(obj, "fields", ("responses",))
    if isinstance(fields, str) or not all(isinstance(f, str) for f in fields):
        raise ValueError(f"credit.length_reward.scorer={spec}: its 'fields' must be a tuple of field names")
    stage = getattr(obj, "stage", None)
    if stage not in SCORER_STAGES:
        raise ValueError(
            f"credit.length_reward.scorer={spec}: its 'stage' must be one of {SCORER_STAGES}, got {stage!r}"
        )
    return SignificanceScorer(
        name=spec, fn=obj, fields=tuple(fields), normalize=bool(getattr(obj, "normalize", True)), stage=stage
    )


def run_scorer(scorer: SignificanceScorer, inputs: ScorerInputs) -> torch.Tensor:
    """Call ``scorer`` and check its output: FloatTensor[B, T] float64, 0 at masked positions.

    Raises ValueError when a declared field is missing, the output is not a (B, T) tensor, or a
    valid position holds NaN / inf (naming the scorer, the rollout and the position).
    """
    missing = [f for f in scorer.all_fields if f not in inputs.fields]
    if missing:
        raise ValueError(f"significance scorer {scorer.name!r} needs batch field {missing[0]!r}, which is missing")
    out = scorer.fn(inputs)
    shape = tuple(inputs.response_mask.shape)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"significance scorer {scorer.name!r} must return a Tensor of shape (B, T) = {shape}, got {got}"
        )
    out = out.detach().to(torch.float64)
    valid = inputs.response_mask.bool()
    bad = valid & ~torch.isfinite(out)
    if bad.any():
        row, pos = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"significance scorer {scorer.name!r} returned {out[row, pos].item()} for rollout {row} at response "
            f"position {pos}: scores of valid tokens must be finite (check its inputs, e.g. old_log_probs)"
        )
    return torch.where(valid, out, torch.zeros_like(out))


def _surprisal(inputs: ScorerInputs) -> torch.Tensor:
    """s_it = -log pi_old(o_it): tokens the policy found hard to predict carry the decisions."""
    return -inputs.fields["old_log_probs"].to(torch.float64)


def _ktae_significance(inputs: ScorerInputs) -> torch.Tensor:
    """s_it = |K(o_it)|, KTAE's key-token value (0 in groups that are all correct or all wrong)."""
    K, _ = key_token_values(
        inputs.fields["responses"], inputs.response_mask, inputs.correct, inputs.groups, inputs.ktae_params
    )
    return K.abs()


def _counterfactual(inputs: ScorerInputs) -> torch.Tensor:
    """s_it = I_hat of the span holding token t (0 outside measured spans), in [0, 1]."""
    scores, spans, _ = (inputs.fields[f] for f in STAGE_FIELDS)
    return token_significance(scores, spans, inputs.response_mask)


register_scorer(SignificanceScorer("surprisal", _surprisal, fields=("old_log_probs",), normalize=True))
register_scorer(SignificanceScorer("ktae", _ktae_significance, fields=("responses",), normalize=True))
register_scorer(SignificanceScorer("counterfactual", _counterfactual, normalize=False, stage="counterfactual"))
BUILTIN_SCORERS = ("surprisal", "ktae", "counterfactual")
