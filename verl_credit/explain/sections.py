"""Credit views of the explain report: one builder per estimator, each calling the package's functions.

Public API:
    Workspace      -- what a builder receives: rollouts, model, tokenizer, credit config, context.
    TokenView      -- a value per response token of every rollout, shaded in the report.
    TokenStrip     -- a row of tokens outside the rollouts (e.g. a reference answer), with values.
    Table          -- a titled table of cells (str, int or float).
    Section        -- one estimator's result: views, strips, tables, metrics, figures, raw data.
    explainer(...) -- decorator registering a builder ``fn(ws) -> Section``.
    available()    -- registered builders whose estimator exists in this version, in report order.
    resolve(names) -- names asked for (None = all available) -> list, or ValueError listing the valid ones
                      (and the closest match). A registered estimator without a view of its own (a
                      user's, e.g. from ``verl-credit explain --import my_pkg``) gets the generic view
                      of its token advantages when named; it is not in the default list.
    build(name, ws) -> Section
    token_pieces(tokenizer, ids) -> list[str]   text of every token; "".join == the decoded text.

Adding an estimator to the report is one decorated builder: it computes through the estimator's
own functions and returns a Section; the report and the plots render any Section. The built-in
builders live one per estimator in :mod:`verl_credit.explain.views` (``views/ktae.py``, ...),
imported at the end of this module; this module holds what they share and the registry.
Shapes: B rollouts, T response positions (right-padded), G groups, J reference-answer tokens.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from verl_credit.batch import CreditBatch, EstimatorContext
from verl_credit.config import CreditConfig
from verl_credit.registry import compute_advantages, get_estimator, list_estimators
from verl_credit.spans import token_char_offsets

__all__ = [
    "Workspace",
    "TokenView",
    "TokenStrip",
    "Table",
    "Section",
    "explainer",
    "available",
    "resolve",
    "build",
    "token_pieces",
]


def token_pieces(tokenizer, ids) -> list[str]:
    """Text of every token, such that ``"".join(pieces)`` is the decoded text: characters between
    two tokens' offsets go to the later token (byte-level BPE offsets may leave out a leading space)."""
    ids = [int(i) for i in ids]
    if not ids:
        return []
    text, _, ends = token_char_offsets(tokenizer, ids)
    pieces, prev = [], 0
    for end in ends.tolist():
        end = min(max(prev, int(end)), len(text))
        pieces.append(text[prev:end])
        prev = end
    pieces[-1] += text[prev:]
    return pieces


@dataclass
class Workspace:
    """Inputs of every builder. ``batch(fields)`` is the CreditBatch the trainer would build;
    ``score_fn`` is the scoring stage's transformers path (``scoring.hf_scorer``)."""

    rollouts: Any  # verl_credit.explain.run.Rollouts
    tokenizer: Any
    model: Any
    credit: CreditConfig
    ctx: EstimatorContext
    pad_id: int
    score_rows: str = "all"
    max_new_tokens: int | None = None  # the sampling limit (a rollout without eos was cut there)

    def batch(self, fields: dict | None = None) -> CreditBatch:
        return self.rollouts.credit_batch(self.pad_id, fields)

    @cached_property
    def score_fn(self):
        from verl_credit.scoring import hf_scorer

        return hf_scorer(self.model, self.pad_id, self.credit.counterfactual.max_batch_tokens)

    def answer_ids(self, template: str) -> list[torch.Tensor]:
        """Every rollout's reference answer rendered by ``template`` (``{answer}`` = ground truth),
        tokenized as the actor worker does (no special tokens)."""
        from verl_credit.scoring import answer_ids

        ro = self.rollouts
        return [answer_ids(self.tokenizer, template, ro.problems[k].ground_truth) for k in ro.problem_of]

    def reference_answers(self, template: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(ids, is_answer) per rollout: :meth:`answer_ids` and which of those tokens are the
        answer's own (``scoring.reference_answer``; the template around it is context)."""
        from verl_credit.scoring import reference_answer

        ro = self.rollouts
        pairs = [reference_answer(self.tokenizer, template, ro.problems[k].ground_truth) for k in ro.problem_of]
        return [ids for ids, _ in pairs], [mark for _, mark in pairs]

    def span_scores(self, rows: list[int], spans=None):
        """``scoring.score_spans`` of ``rows`` with the run's ``credit.counterfactual`` (gold answers
        teacher-forced when ``answer_source=gold``, as the trainer's stage does); ``spans``: the
        stage's ``find_spans`` result when the caller already has it."""
        from verl_credit.scoring import score_spans

        cf = self.credit.counterfactual
        gold = self.answer_ids(cf.gold_template) if cf.answer_source == "gold" else None
        return score_spans(
            self.tokenizer, self.score_fn, self.rollouts.prompts, self.rollouts.responses, cf, rows, gold, spans
        )

    @cached_property
    def pieces(self) -> list[list[str]]:
        """Token texts of every rollout's response."""
        return [token_pieces(self.tokenizer, r.tolist()) for r in self.rollouts.responses]

    @cached_property
    def correct(self) -> torch.Tensor:
        return self.batch().scores > self.credit.correct_threshold


@dataclass
class TokenView:
    """values: FloatTensor[B, T] over the response tokens (padding ignored), shaded around
    ``center`` (0 for advantages, 1 for weights, the threshold for significance). label: what a
    value is, shown in each token's tooltip. short: a name for plot axes (default: the title).
    scale: views with the same scale name share one colour scale per rollout ("advantage": every
    view in advantage units, so colours compare across estimators). parts: more (B, T) values
    named in the tooltip, e.g. the A and the w of A x w."""

    title: str
    values: torch.Tensor
    label: str = "A"
    center: float = 0.0
    open: bool = False
    short: str = ""
    scale: str = "advantage"
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TokenStrip:
    """pieces: J token texts; values: J values shaded around ``center``; tooltips: J strings."""

    title: str
    pieces: list[str]
    values: list[float]
    tooltips: list[str]
    center: float = 0.0


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class Section:
    """One estimator's part of the report. ``data`` goes to explain.json (numbers the tests check);
    ``figures`` (title, PNG bytes) are filled by :mod:`verl_credit.explain.plots`."""

    key: str
    title: str
    paper: str
    description: str
    views: list[TokenView] = field(default_factory=list)
    strips: list[TokenStrip] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Explainer:
    name: str
    fn: Callable[[Workspace], Section]
    requires: Callable[[], str | None]  # None when available, else the reason


_EXPLAINERS: dict[str, _Explainer] = {}


def explainer(name: str, requires: Callable[[], str | None] = lambda: None):
    """Register ``fn(ws) -> Section`` under ``name``; ``requires()`` returns why it cannot run, or None."""

    def wrap(fn):
        if name in _EXPLAINERS:
            raise ValueError(f"explain view {name!r} is already registered")
        _EXPLAINERS[name] = _Explainer(name, fn, requires)
        return fn

    return wrap


def available() -> list[str]:
    return [name for name, e in _EXPLAINERS.items() if e.requires() is None]


def _generic_reason(name: str) -> str | None:
    """Why the registered estimator ``name`` cannot get the generic view (None when it can)."""
    spec = get_estimator(name)
    if spec.fields or spec.stage:
        needs = ", ".join([*spec.fields, *(f"stage {s!r}" for s in spec.stage)])
        return (
            f"estimator {name!r} needs {needs}, which the generic view does not compute; register a view "
            "for it with verl_credit.explain.sections.explainer"
        )
    return None


def resolve(names: list[str] | None) -> list[str]:
    """Names asked for, checked (None = every available view, in registration order)."""
    if names is None:
        return available()
    for name in names:
        if name not in _EXPLAINERS:
            if name in list_estimators():
                reason = _generic_reason(name)
                if reason is not None:
                    raise ValueError(f"explain: {reason}")
                continue
            known = [*available(), *(e for e in list_estimators() if e not in _EXPLAINERS)]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"explain: unknown estimator {name!r}; available: {', '.join(known)}{hint}")
        reason = _EXPLAINERS[name].requires()
        if reason is not None:
            raise ValueError(f"explain: {name} is not available in this version: {reason}")
    return list(dict.fromkeys(names))


def build(name: str, ws: Workspace) -> Section:
    from verl_credit.explain.plots import figures_for

    section = _EXPLAINERS[name].fn(ws) if name in _EXPLAINERS else _generic_view(name, ws)
    section.figures = figures_for(section, ws)
    return section


def _generic_view(name: str, ws: Workspace) -> Section:
    """A registered estimator without a view of its own: the token advantages it returns."""
    spec = get_estimator(name)
    batch = ws.batch()
    out = compute_advantages(spec, batch, ws.ctx)
    views = [TokenView(f"{name}: token advantages", out.advantages, "A", open=True, short=name)]
    if out.token_weights is not None:
        views.append(
            TokenView(f"{name}: token weights", out.token_weights, "w", center=1.0, short=f"{name} w", scale="weight")
        )
    return Section(
        key=name,
        title=f"{name} (registered estimator)",
        paper=spec.description or f"{spec.fn.__module__}.{spec.fn.__name__}",
        description=(
            f"The advantages that {spec.fn.__module__}.{spec.fn.__name__} returns for these rollouts, through "
            "verl_credit.compute_advantages (the trainer's checks included). It has no view of its own: "
            "register one with verl_credit.explain.sections.explainer for tables and plots."
        ),
        views=views,
        metrics=dict(out.metrics),
        data={"advantages": _per_rollout(out.advantages, batch.response_mask)},
    )


def _estimator(name: str) -> Callable[[], str | None]:
    return lambda: None if name in list_estimators() else f"estimator {name!r} is not registered"


def _per_rollout(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """(B, T) -> B lists of the values at valid positions (rounded for the JSON file)."""
    return [[round(float(v), 6) for v in row[m.bool()]] for row, m in zip(values, mask, strict=True)]


# ---------------------------------------------------------------------------------- built-in views
# One module per estimator under verl_credit/explain/views/, each registering its builder with
# @explainer above. Imported last because they import this module (see views/__init__.py).
import verl_credit.explain.views  # noqa: E402, F401
