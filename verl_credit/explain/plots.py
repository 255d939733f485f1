"""Summary plots of the explain report, as PNG bytes (matplotlib's object API, no pyplot state).

    figures_for(section, ws) -> [(title, png)]   the plots of one estimator's section.
    summary_figures(result)  -> [(title, png)]   outcomes per problem and the spread of every view.
    label_overlaps(fig) -> [(text, text)]        pairs of the figure's labels whose boxes overlap.

Each plot shows numbers the section already holds; nothing is recomputed here. A histogram whose
every value sits at the view's centre (no signal) is drawn empty, with a note saying so.
"""

from __future__ import annotations

import io
import math

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

__all__ = ["figures_for", "summary_figures", "label_overlaps"]

GREEN, RED, GREY, BLUE, AMBER = "#16a34a", "#dc2626", "#6b7280", "#2563eb", "#f59e0b"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _drawn_tick_labels(axis) -> list[Text]:
    """The tick labels ``axis`` draws: the locator's current ticks inside the view (matplotlib keeps
    stale tick objects around, with old positions, that are not drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    locs = axis.get_majorticklocs()
    ticks = axis.get_major_ticks(len(locs))
    eps = 1e-9 * max(1.0, abs(hi - lo))
    return [t.label1 for t, loc in zip(ticks, locs, strict=True) if lo - eps <= loc <= hi + eps]


def _labels(fig: Figure) -> list[Text]:
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        texts += _drawn_tick_labels(ax.xaxis) + _drawn_tick_labels(ax.yaxis)
        legend = ax.get_legend()
        if legend is not None:
            texts += legend.get_texts()
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def label_overlaps(fig: Figure) -> list[tuple[str, str]]:
    """Texts of ``fig`` that are drawn (titles, axis and tick labels, notes, legends) whose boxes
    overlap by more than a pixel: labels that collide."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _labels(fig)]
    out = []
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            (ta, ba), (tb, bb) = boxes[a], boxes[b]
            dx = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            dy = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if dx > 1 and dy > 1:
                out.append((ta, tb))
    return out


def _valid(view_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return view_values[mask.bool()].float()


def _hist(ax, values: torch.Tensor, center: float, title: str) -> None:
    """Tokens per value: green above ``center``, red below, grey at it; no bars when every value is at
    the centre (the view has no signal), only a note."""
    vals = values[torch.isfinite(values)].tolist()
    if not vals:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    elif all(abs(v - center) < 1e-12 for v in vals):
        ax.text(0.5, 0.5, f"every token at {center:g}:\nno signal", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([center])
        ax.set_yticks([])
    else:
        lo, hi = min(vals), max(vals)
        edges = torch.linspace(lo, hi, 31).tolist() if hi > lo else [lo - 0.5, hi + 0.5]
        for keep, colour in ((lambda v: v > center, GREEN), (lambda v: v < center, RED), (lambda v: v == center, GREY)):
            picked = [v for v in vals if keep(v)]
            if picked:
                ax.hist(picked, bins=edges, color=colour)
        ax.axvline(center, color=GREY, lw=0.8)
        ax.set_ylabel("tokens", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def _ktae(section, ws) -> list[tuple[str, bytes]]:
    mask = ws.batch().response_mask
    K = section.views[1].values
    mixed = K[mask.bool()]
    fig = Figure(figsize=(6, 2.6))
    _hist(fig.add_subplot(1, 1, 1), mixed[mixed != 0], 0.0, "key-token values K (tokens of mixed groups, K != 0)")
    return [("Distribution of K", _png(fig))]


def _counterfactual(section, ws) -> list[tuple[str, bytes]]:
    spans = next(t for t in section.tables if "D" in t.columns)
    D = [row[spans.columns.index("D")] for row in spans.rows]
    kinds = [row[spans.columns.index("kind")] for row in spans.rows]
    fig = Figure(figsize=(7.5, 2.9))
    ax = fig.add_subplot(1, 2, 1)
    if D:
        for kind, colour in (("arithmetic", BLUE), ("sentence", GREY)):
            ys = [d for d, k in zip(D, kinds, strict=True) if k == kind]
            ax.scatter([kind] * len(ys), ys, s=14, color=colour, alpha=0.7)
        ax.axhline(0.0, color=RED, lw=0.8)
        ax.set_xlim(-0.6, 1.6)
    else:
        ax.text(0.5, 0.5, "no measured spans", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("D per span (> 0: distractor)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax = fig.add_subplot(1, 2, 2)
    measured = torch.tensor([c["status"] == "spans measured" for c in section.data.get("coverage", [])], dtype=bool)
    mask = ws.batch().response_mask.bool()
    if measured.numel() == mask.shape[0]:
        mask = mask & measured.unsqueeze(1)
    if mask.any():
        data = [v.parts["w"][mask].float().numpy() for v in section.views]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(data) + 1), [v.short or v.title for v in section.views], fontsize=7, rotation=20)
        ax.axhline(1.0, color=GREY, lw=0.8)
    else:
        ax.text(0.5, 0.5, "no measured rollout", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("weights w on the measured rollouts, per mode", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return [("Span importance and weights", _png(fig))]


def _shown(piece: str) -> str:
    """A token as an axis label: spaces as a visible mark, escapes of control characters."""
    return repr(piece)[1:-1].replace(" ", "\u2423") or "\u2205"


def _variance(section, ws) -> list[tuple[str, bytes]]:
    refs = section.data["reference"]
    if not refs:
        return []
    fig = Figure(figsize=(6.5, 1.7 * len(refs) + 0.4))
    for k, (uid, ref) in enumerate(refs.items()):
        ax = fig.add_subplot(len(refs), 1, k + 1)
        ax.bar(range(len(ref["sigma"])), ref["sigma"], color=BLUE)
        ax.set_xticks(range(len(ref["tokens"])), [_shown(p) for p in ref["tokens"]], fontsize=7)
        ax.set_ylabel("sigma", fontsize=8)
        ax.set_title(f"group {uid}", fontsize=8)
        ax.tick_params(labelsize=7)
        if k == len(refs) - 1:
            ax.set_xlabel("reference-answer token (\u2423: a space)", fontsize=8)
    fig.tight_layout()
    return [("sigma of each reference-answer token", _png(fig))]


def _length(section, ws) -> list[tuple[str, bytes]]:
    rows = section.tables[0].rows
    fig = Figure(figsize=(6.5, 2.6))
    ax = fig.add_subplot(1, 1, 1)
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r[6] for r in rows], width=0.4, color=GREY, label="reward")
    ax.bar([i + 0.2 for i in x], [r[8] for r in rows], width=0.4, color=BLUE, label="shaped")
    ax.set_xticks(list(x), [r[0] for r in rows], rotation=90, fontsize=6)
    ax.axhline(0.0, color=GREY, lw=0.6)
    ax.legend(fontsize=7)
    ax.set_title("outcome reward before and after the length reward", fontsize=9)
    ax.tick_params(labelsize=7)
    return [("Reward shaping per rollout", _png(fig))]


_BY_KEY = {"ktae": _ktae, "counterfactual": _counterfactual, "variance_weighted": _variance, "length_reward": _length}


def figures_for(section, ws) -> list[tuple[str, bytes]]:
    """The section's own plots (estimators without a dedicated plot get none)."""
    fn = _BY_KEY.get(section.key)
    return fn(section, ws) if fn else []


def summary_figures(result) -> list[tuple[str, bytes]]:
    """Correct solutions per problem; per estimator, the histogram of its main token view."""
    ro = result.rollouts
    G = result.config.group_size
    threshold = result.credit.correct_threshold
    fig = Figure(figsize=(6.5, 2.4))
    ax = fig.add_subplot(1, 1, 1)
    counts = {"correct": [], "correct but cut (doubtful)": [], "wrong": []}
    for k in range(len(ro.problems)):
        members = [i for i in range(len(ro)) if ro.problem_of[i] == k]
        right = [i for i in members if float(ro.rewards[i]) > threshold]
        cut = [i for i in right if not ro.finished[i]]
        counts["correct"].append(len(right) - len(cut))
        counts["correct but cut (doubtful)"].append(len(cut))
        counts["wrong"].append(len(members) - len(right))
    bottom = [0] * len(ro.problems)
    for (label, values), colour in zip(counts.items(), (GREEN, AMBER, RED), strict=True):
        ax.bar(range(len(values)), values, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(ro.problems)), [p.uid for p in ro.problems], fontsize=7)
    ax.set_ylabel(f"solutions (of {G})", fontsize=8)
    ax.set_ylim(0, G * 1.45)
    ax.legend(fontsize=7, ncol=3, loc="upper center", frameon=False)
    ax.set_title("graded solutions per problem", fontsize=9)
    ax.tick_params(labelsize=7)
    figures = [("Outcomes", _png(fig))]

    views = [(s.key, s.views[0]) for s in result.sections if s.views]
    if views:
        cols = min(3, len(views))
        rows = math.ceil(len(views) / cols)
        fig = Figure(figsize=(3.2 * cols, 2.3 * rows))
        pad = result.tokenizer.pad_token_id if result.tokenizer.pad_token_id is not None else 0
        mask = ro.padded(pad)[1]
        for k, (name, view) in enumerate(views):
            _hist(fig.add_subplot(rows, cols, k + 1), _valid(view.values, mask), view.center, f"{name}: {view.label}")
        fig.tight_layout()
        figures.append(("Token values of each estimator (all rollouts)", _png(fig)))
    return figures
