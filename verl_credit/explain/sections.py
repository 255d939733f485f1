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

Adding an estimator to the report is one decorated builder here: it computes through the
estimator's own functions and returns a Section; the report and the plots render any Section.
Shapes: B rollouts, T response positions (right-padded), G groups, J reference-answer tokens.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
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


# ------------------------------------------------------------------------------------------ GRPO


@explainer("grpo")
def grpo_view(ws: Workspace) -> Section:
    from verl_credit.estimators import GRPO_SPEC

    batch = ws.batch()
    out = compute_advantages(GRPO_SPEC, batch, ws.ctx)
    z = out.advantages[torch.arange(batch.batch_size), 0]
    return Section(
        key="grpo",
        title="GRPO (the baseline)",
        paper="Shao et al., arXiv 2402.03300; verl's algorithm.adv_estimator=grpo",
        description=(
            "Every token of a solution gets the same advantage z = (r - mean) / (std + eps) over its group. "
            "All-correct and all-wrong groups give z = 0: no token learns anything from them."
        ),
        views=[TokenView("GRPO advantage (same for every token)", out.advantages, "A")],
        data={"outcome_advantage": [round(float(v), 6) for v in z]},
    )


# ------------------------------------------------------------------------------------------ KTAE


@explainer("ktae", requires=_estimator("ktae"))
def ktae_view(ws: Workspace) -> Section:
    batch = ws.batch()
    out = compute_advantages("ktae", batch, ws.ctx)
    K = out.diagnostics["key_token_values"]
    z = out.diagnostics["outcome_advantage"]
    correct, groups = ws.correct, batch.groups
    rows = []
    for g, uid in enumerate(groups.uids):
        members = (groups.group == g).nonzero().flatten().tolist()
        C = int(correct[members].sum())
        W = len(members) - C
        if C == 0 or W == 0:
            continue
        value: dict[int, float] = {}  # K of each token id in this group (the same at every occurrence)
        holders: dict[int, set[int]] = {}  # rollouts that contain it
        for i in members:
            valid = batch.response_mask[i].bool()
            for tok, k in zip(batch.responses[i][valid].tolist(), K[i][valid].tolist(), strict=True):
                value.setdefault(tok, k)
                holders.setdefault(tok, set()).add(i)
        ranked = sorted(value, key=lambda t: -value[t])
        positive = [t for t in ranked if value[t] > 0][:5]
        negative = [t for t in reversed(ranked) if value[t] < 0][:5]
        for tok in positive + negative:
            a = sum(1 for i in holders[tok] if correct[i])
            shown = repr(ws.tokenizer.decode([tok]))
            rows.append([uid, shown, round(value[tok], 4), f"{a}/{C}", f"{len(holders[tok]) - a}/{W}"])
    return Section(
        key="ktae",
        title="KTAE: key-token advantage",
        paper="Sun et al., arXiv 2505.16826 (NeurIPS 2025); algorithm.adv_estimator=ktae",
        description=(
            "A = z + K(token): per group, a token id that appears in the correct solutions more than in the wrong "
            "ones (Fisher exact test, information gain, frequency ratio) gets K > 0 at every occurrence, the "
            "reverse K < 0. K is 0 in all-correct or all-wrong groups and for pad/eos ids."
        ),
        views=[
            TokenView("KTAE advantage A = z + K", out.advantages, "A", open=True),
            TokenView("key-token value K alone", K, "K"),
        ],
        tables=[
            Table(
                "Key tokens of each mixed group (the 5 largest and the 5 most negative K)",
                ["group", "token", "K", "in correct", "in wrong"],
                rows,
                note="" if rows else "No group has both correct and wrong solutions: every K is 0.",
            )
        ],
        metrics=dict(out.metrics),
        data={
            "advantages": _per_rollout(out.advantages, batch.response_mask),
            "key_token_values": _per_rollout(K, batch.response_mask),
            "outcome_advantage": [round(float(v), 6) for v in z],
        },
    )


# -------------------------------------------------------------------------------- counterfactual


def _counterfactual_requires() -> str | None:
    try:
        from verl_credit.scoring import score_spans  # noqa: F401
        from verl_credit.weighting import apply_counterfactual_weights  # noqa: F401
    except ImportError as err:
        return str(err)
    return _estimator("counterfactual")()


def _quoted(items) -> str:
    """Markers as the user types them: ``"final answer", "####", "\\boxed{"`` (no repr escapes)."""
    return ", ".join(f'"{m}"' for m in items)


@explainer("counterfactual", requires=_counterfactual_requires)
def counterfactual_view(ws: Workspace) -> Section:
    from verl_credit.core.counterfactual import WEIGHT_MODES, span_importance
    from verl_credit.core.groups import contrast_rows
    from verl_credit.explain.coverage import reason_rows, rollout_coverages, summarize
    from verl_credit.spans import find_spans
    from verl_credit.weighting import apply_counterfactual_weights

    cf = ws.credit.counterfactual
    plain = ws.batch()
    rows = list(range(plain.batch_size))
    if ws.score_rows == "trained":  # the trainer scores only groups with a non-zero outcome advantage
        rows = contrast_rows(plain.scores, plain.groups).nonzero().flatten().tolist()
    ro = ws.rollouts
    found = find_spans(ws.tokenizer, [r.tolist() for r in ro.responses], cf)
    res = ws.span_scores(rows, found)
    fields = {"credit_cf_scores": res.scores, "credit_cf_spans": res.spans, "credit_cf_answer": res.answer}
    batch = ws.batch(fields)
    base = compute_advantages("counterfactual", batch, ws.ctx).advantages.clone()  # GRPO's A, before w
    outputs = {}
    for mode in WEIGHT_MODES:
        out = compute_advantages("counterfactual", batch, ws.ctx)
        outputs[mode] = apply_counterfactual_weights(out, batch, dataclasses.replace(cf, mode=mode), global_step=0)
    D, importance = span_importance(res.scores)
    weights = outputs["counterfactual"].token_weights
    table = []
    for i in range(batch.batch_size):
        for k, kind in enumerate(res.kinds[i]):
            s0, s1 = (int(x) for x in res.spans[i, k])
            if s0 < 0 or math.isnan(float(D[i, k])):
                continue
            text = "".join(ws.pieces[i][s0:s1])
            table.append(
                [
                    f"{ro.uids[i]}.{i}",
                    k + 1,
                    kind,
                    text,
                    round(float(D[i, k]), 4),
                    round(float(importance[i, k]), 3),
                    round(float(weights[i, s0]), 3),
                    "yes" if float(D[i, k]) > 0 else "",
                ]
            )
    gold = cf.answer_source == "gold"
    coverage = rollout_coverages(ws.tokenizer, ro, found, cf, set(rows), gold, ws.max_new_tokens)
    for i, c in enumerate(coverage):  # the detection and the stage's scores must tell the same story
        if c.measured != bool((~torch.isnan(D[i])).any()):
            raise RuntimeError(f"explain: rollout {i}: span detection says {c.status!r}, the scores disagree")
    measured = sum(c.measured for c in coverage)
    titles = {
        "counterfactual": "A x w, counterfactual weights (the method)",
        "uniform": "A x w, control: uniform (every weight 1, plain GRPO/DAPO)",
        "random": "A x w, control: random importances (seeded)",
        "inverted": "A x w, control: inverted importances (1 - I)",
    }
    views = [
        TokenView(
            titles[m],
            outputs[m].advantages,
            "A x w",
            open=(m == "counterfactual"),
            short=m,
            parts={"A": base, "w": outputs[m].token_weights},
        )
        for m in WEIGHT_MODES
    ]
    metrics = dict(outputs["counterfactual"].metrics)
    metrics.update(
        {
            "counterfactual/rollouts_with_answer/count": float((res.answer[:, 0] >= 0).sum()),
            "counterfactual/rollouts_with_spans_measured/count": float(measured),
            "counterfactual/forward_tokens/count": float(res.forward_tokens),
            "counterfactual/forward_tokens_vs_naive/ratio": res.forward_tokens / max(1, res.naive_tokens),
        }
    )
    counts = summarize(coverage)
    markers = _quoted([*cf.answer_markers, cf.boxed_marker])
    reasons = reason_rows(coverage, [f"{u}.{i}" for i, u in enumerate(ro.uids)])
    return Section(
        key="counterfactual",
        title="Counterfactual span importance",
        paper="Khandoga et al., arXiv 2602.09331; algorithm.adv_estimator=counterfactual",
        description=(
            "Each reasoning span (calculation, sentence) is overwritten in place by a placeholder and the answer's "
            "log-probability is scored again: D = S(without span) - S(original). Spans whose removal hurts the "
            f"answer (D < 0) are critical and get weights up to w_max = {cf.w_max}; D > 0 marks a distractor. "
            f"Answer tokens get {cf.answer_weight}, other tokens 1"
            + (
                " (then each rollout's weights are rescaled to mean 1: conserve_gradient)"
                if cf.conserve_gradient
                else ""
            )
            + ". The token views show the advantage the loss sees, A x w (GRPO's A times the weight; hover for "
            "both): on a wrong rollout A < 0, so a larger weight means more blame (deeper red). The three "
            "controls of the paper's ablation are shown below the method."
        ),
        views=views,
        tables=[
            Table(
                f"Which rollouts were measured: {measured} of {len(ro)}",
                ["status", "reason", "count", "rollouts"],
                reasons,
                note=(
                    f"Answer markers: {markers} (the last one that only answer material follows); answer source: "
                    f"{cf.answer_source}. Read off the stage's own span detection (verl_credit.spans.find_spans). "
                    "A rollout without measured spans keeps weight 1 on its reasoning tokens."
                ),
            ),
            Table(
                "Spans (measured rollouts)",
                ["rollout", "span", "kind", "text", "D", "importance", "weight", "distractor"],
                table,
            ),
        ],
        metrics=metrics,
        data={
            "scores": [[None if math.isnan(v) else round(v, 6) for v in row.tolist()] for row in res.scores],
            "D": [[None if math.isnan(v) else round(v, 6) for v in row.tolist()] for row in D],
            "weights": {m: _per_rollout(outputs[m].token_weights, batch.response_mask) for m in WEIGHT_MODES},
            "advantages": {m: _per_rollout(outputs[m].advantages, batch.response_mask) for m in WEIGHT_MODES},
            "spans": res.spans.tolist(),
            "answer": res.answer.tolist(),
            "rows_asked": rows,
            "coverage": [dataclasses.asdict(c) for c in coverage],
            "measured": measured,
            "coverage_counts": counts,
            "answer_markers": [*cf.answer_markers, cf.boxed_marker],
        },
    )


# ------------------------------------------------------------------------------ variance-weighted


def _variance_requires() -> str | None:
    try:
        from verl_credit.scoring import score_reference  # noqa: F401
    except ImportError as err:
        return str(err)
    return _estimator("variance_weighted")()


def _group_ranks(values: torch.Tensor, group: torch.Tensor) -> list[int]:
    """Rank of each value inside its group: 1 = the largest; ties share the best rank."""
    v, g = values.float().tolist(), group.tolist()
    return [1 + sum(1 for j in range(len(v)) if g[j] == g[i] and v[j] > v[i]) for i in range(len(v))]


@explainer("variance_weighted", requires=_variance_requires)
def variance_view(ws: Workspace) -> Section:
    from verl_credit.scoring import score_reference

    params = ws.credit.variance
    ro = ws.rollouts
    refs, marks = ws.reference_answers(params.answer_template)
    logprobs, mask, forward = score_reference(
        ws.tokenizer,
        ws.score_fn,
        ro.prompts,
        ro.responses,
        refs,
        list(range(len(ro))),
        ws.ctx.config.counterfactual,
        answer_masks=marks,
    )
    batch = ws.batch({"credit_ref_logprobs": logprobs, "credit_ref_mask": mask})
    out = compute_advantages("variance_weighted", batch, ws.ctx)
    sigma, weights = out.diagnostics["sigma"], out.diagnostics["reference_weights"]
    r3, shaped = out.diagnostics["r3"], out.diagnostics["shaped_reward"]
    groups = batch.groups
    strips, ref_data = [], {}
    center = 1.0 if params.weighting == "linear" else 0.5
    for g, uid in enumerate(groups.uids):
        first = int((groups.group == g).nonzero()[0])
        J = int(refs[first].numel())  # every teacher-forced token; the template's are context (sigma 0)
        scored = marks[first].tolist()
        pieces = token_pieces(ws.tokenizer, refs[first].tolist())[:J]
        ref_data[uid] = {
            "tokens": pieces,
            "scored": scored,
            "sigma": [round(float(v), 6) for v in sigma[g, :J]],
            "weights": [round(float(v), 6) for v in weights[g, :J]],
        }
        strips.append(
            TokenStrip(
                f"group {uid}: reference answer {''.join(pieces)!r}"
                + ("" if bool(out.diagnostics["sigma"][g].abs().sum() > 0) else " (no contrast: R3 = 0)"),
                pieces,
                [
                    float(v) if scored[j] else center for j, v in enumerate(weights[g, :J].tolist())
                ],  # context: no colour
                [
                    f"sigma {float(sigma[g, j]):.4f}, weight {float(weights[g, j]):.3f}"
                    if scored[j]
                    else "template: context, not scored"
                    for j in range(J)
                ],
                center=center,
            )
        )
    r3_rank, shaped_rank = _group_ranks(r3, groups.group), _group_ranks(shaped, groups.group)
    table = [
        [
            f"{ro.uids[i]}.{i}",
            float(batch.scores[i]),
            round(float(r3[i]), 4),
            r3_rank[i],
            round(float(shaped[i]), 4),
            shaped_rank[i],
            round(float(out.advantages[i, 0]), 4),
        ]
        for i in range(len(ro))
    ]
    metrics = dict(out.metrics)
    metrics["variance/forward_tokens/count"] = float(forward)
    return Section(
        key="variance_weighted",
        title="Variance-weighted reward (DRO's R3)",
        paper="Xu et al., arXiv 2506.13351; algorithm.adv_estimator=variance_weighted",
        description=(
            f"The reference answer ({params.answer_template!r}) is teacher-forced after each solution's reasoning; "
            "only the answer's own tokens are scored (the template is context). "
            "Answer tokens whose log-probability varies across the group's solutions (high sigma) reflect the "
            f"reasoning and carry the weight ({params.weighting}). R3 is the weighted mean log-probability. "
            + (
                "Shaping within_class: R3 is z-scored inside each outcome class and bounded by "
                f"{params.r3_coef} x half the gap between the correct and the wrong rewards of the group, so it "
                "reorders solutions inside a class, never a wrong one above a correct one; all-correct or all-wrong "
                "groups still get a signal."
                if params.shaping == "within_class"
                else f"r' = r + {params.r3_coef} * zscore(R3) (shaping unbounded) feeds GRPO, so even all-correct or "
                "all-wrong groups get a signal."
            )
        ),
        views=[TokenView("variance-weighted advantage (GRPO on r')", out.advantages, "A")],
        strips=strips,
        tables=[
            Table(
                "Rollouts",
                ["rollout", "reward r", "R3", "R3 rank", "shaped r'", "r' rank", "advantage"],
                table,
                note="Ranks inside the group, 1 = the largest (ties share the best rank).",
            )
        ],
        metrics=metrics,
        data={
            "reference": ref_data,
            "r3": [round(float(v), 6) for v in r3],
            "shaped_reward": [round(float(v), 6) for v in shaped],
            "r3_rank": r3_rank,
            "shaped_rank": shaped_rank,
            "advantages": _per_rollout(out.advantages, batch.response_mask),
        },
    )


# --------------------------------------------------------------------------------- length reward


def _length_requires() -> str | None:
    try:
        from verl_credit.core.length_reward import compute_length_reward  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


@explainer("length_reward", requires=_length_requires)
def length_reward_view(ws: Workspace) -> Section:
    from verl_credit.core.counterfactual import STAGE_FIELDS
    from verl_credit.core.groups import multi_rollout_rows
    from verl_credit.core.length_reward import (
        DynamicLambdaSchedule,
        ScorerInputs,
        compute_length_reward,
        length_reward_metrics,
        resolve_scorer,
        run_scorer,
    )

    lr = ws.credit.length_reward
    scorer = resolve_scorer(lr.scorer)
    batch = ws.batch()
    available = {"responses": batch.responses}
    if "old_log_probs" in scorer.fields:  # what verl's actor computes before the advantage step
        ro = ws.rollouts
        seqs = [torch.cat([p, r]) for p, r in zip(ro.prompts, ro.responses, strict=True)]
        targets = torch.tensor([[p.numel(), s.numel()] for p, s in zip(ro.prompts, seqs, strict=True)])
        old = torch.zeros(batch.responses.shape)
        for i, lp in enumerate(ws.score_fn(seqs, targets)):
            old[i, : lp.numel()] = lp
        available["old_log_probs"] = old
    if scorer.stage == "counterfactual":  # the trainer's rule with the length reward on: groups of >= 2
        rows = multi_rollout_rows(batch.groups).nonzero().flatten().tolist()
        res = ws.span_scores(rows)
        available.update(zip(STAGE_FIELDS, (res.scores, res.spans, res.answer), strict=True))
    inputs = ScorerInputs(
        response_mask=batch.response_mask,
        fields={f: available[f] for f in scorer.all_fields},
        correct=ws.correct,
        groups=batch.groups,
        ktae_params=ws.credit.ktae.with_special_ids(ws.ctx.special_token_ids),
        tokenizer=ws.tokenizer,
    )
    significance = run_scorer(scorer, inputs)
    lambda_dyn = DynamicLambdaSchedule(lr).value_at(0)
    res = compute_length_reward(
        significance,
        batch.token_level_rewards,
        batch.response_mask,
        batch.groups,
        lr,
        lambda_dyn,
        correct_threshold=ws.credit.correct_threshold,
        normalize=scorer.normalize,
    )
    table = [
        [
            f"{ws.rollouts.uids[i]}.{i}",
            int(res.lengths[i]),
            int(res.n_insig[i]),
            int(res.n_sig[i]),
            round(float(res.r_ins[i]), 3),
            round(float(res.r_sig[i]), 3),
            float(res.outcome[i]),
            round(float(res.shaping[i]), 3),
            round(float(res.outcome[i] + res.shaping[i]), 3),
        ]
        for i in range(batch.batch_size)
    ]
    return Section(
        key="length_reward",
        title=f"Significance-aware length reward (Bingo), scorer '{lr.scorer}'",
        paper="Liu et al., arXiv 2506.08125; credit.length_reward.enabled=true (composes with any estimator)",
        description=(
            f"Token significance from the '{lr.scorer}' scorer"
            + (", min-max normalised per solution" if scorer.normalize else " (already in [0, 1])")
            + f"; below "
            f"{lr.threshold} a token is insignificant (red). "
            + (
                "The reference counts are each prompt's first-seen anchor (anchor=first_seen): here, the first "
                "sight, the mean over all of the group's solutions, kept for later visits in training; "
                if lr.anchor == "first_seen"
                else "The group's correct solutions give the reference counts (anchor=group); "
            )
            + f"a correct solution gains up to {lr.lambda_c} when it has fewer insignificant tokens than the "
            f"reference, a wrong one loses up to {lr.lambda_wn} + {lr.lambda_we} (lambda_dyn = {lambda_dyn:.3f} "
            "at step 0)."
        ),
        views=[
            TokenView(
                f"significance (normalised {lr.scorer} score; threshold {lr.threshold})",
                res.normalized.float(),
                "s",
                center=lr.threshold,
                scale="significance",
            )
        ],
        tables=[
            Table(
                "Rollouts",
                ["rollout", "tokens", "insignificant", "significant", "r_ins", "r_sig", "reward", "shaping", "shaped"],
                table,
            )
        ],
        metrics=length_reward_metrics(res),
        data={
            "significance": _per_rollout(res.normalized, batch.response_mask),
            "shaping": [round(float(v), 6) for v in res.shaping],
            "lambda_dyn": lambda_dyn,
        },
    )
