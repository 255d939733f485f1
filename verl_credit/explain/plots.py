"""Summary plots of the explain report, as PNG bytes (matplotlib's object API, no pyplot state).

    figures_for(section, ws) -> [(title, png)]   the plots of one estimator's section.
    summary_figures(result)  -> [(title, png)]   outcomes per problem and the spread of every view.

Each plot shows numbers the section already holds; nothing is recomputed here.
"""

from __future__ import annotations

import io
import math

import torch
from matplotlib.figure import Figure

__all__ = ["figures_for", "summary_figures"]

GREEN, RED, GREY, BLUE = "#16a34a", "#dc2626", "#6b7280", "#2563eb"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _valid(view_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return view_values[mask.bool()].float()


def _hist(ax, values: torch.Tensor, center: float, title: str) -> None:
    vals = values[torch.isfinite(values)].tolist()
    if not vals:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    else:
        lo, hi = min(vals), max(vals)
        bins = 30 if hi > lo else 1
        ax.hist([v for v in vals if v >= center], bins=bins, range=(lo, hi) if hi > lo else None, color=GREEN)
        ax.hist([v for v in vals if v < center], bins=bins, range=(lo, hi) if hi > lo else None, color=RED)
        ax.axvline(center, color=GREY, lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("tokens", fontsize=8)
    ax.tick_params(labelsize=7)


def _ktae(section, ws) -> list[tuple[str, bytes]]:
    mask = ws.batch().response_mask
    K = section.views[1].values
    mixed = K[mask.bool()]
    fig = Figure(figsize=(6, 2.6))
    _hist(fig.add_subplot(1, 1, 1), mixed[mixed != 0], 0.0, "key-token values K (tokens of mixed groups, K != 0)")
    return [("Distribution of K", _png(fig))]


def _counterfactual(section, ws) -> list[tuple[str, bytes]]:
    out = []
    D = [row[4] for row in section.tables[0].rows]
    kinds = [row[2] for row in section.tables[0].rows]
    fig = Figure(figsize=(6.5, 2.8))
    ax = fig.add_subplot(1, 2, 1)
    if D:
        for kind, colour in (("arithmetic", BLUE), ("sentence", GREY)):
            ys = [d for d, k in zip(D, kinds, strict=True) if k == kind]
            ax.scatter([kind] * len(ys), ys, s=14, color=colour, alpha=0.7)
        ax.axhline(0.0, color=RED, lw=0.8)
    else:
        ax.text(0.5, 0.5, "no scored spans", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("D per span (> 0: distractor)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax = fig.add_subplot(1, 2, 2)
    mask = ws.batch().response_mask.bool()
    data = [v.values[mask].float().numpy() for v in section.views]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(data) + 1), [v.short or v.title for v in section.views], fontsize=7)
    ax.axhline(1.0, color=GREY, lw=0.8)
    ax.set_title("token weights per mode", fontsize=9)
    ax.tick_params(labelsize=7)
    out.append(("Span importance and weights", _png(fig)))
    return out


def _variance(section, ws) -> list[tuple[str, bytes]]:
    refs = section.data["reference"]
    if not refs:
        return []
    fig = Figure(figsize=(6.5, 1.6 * len(refs) + 0.4))
    for k, (uid, ref) in enumerate(refs.items()):
        ax = fig.add_subplot(len(refs), 1, k + 1)
        ax.bar(range(len(ref["sigma"])), ref["sigma"], color=BLUE)
        ax.set_xticks(range(len(ref["tokens"])), [repr(p)[1:-1] for p in ref["tokens"]], fontsize=7)
        ax.set_ylabel("sigma", fontsize=8)
        ax.set_title(f"group {uid}", fontsize=8)
        ax.tick_params(labelsize=7)
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
    fig = Figure(figsize=(6.5, 2.4))
    ax = fig.add_subplot(1, 1, 1)
    correct = [
        float(ro.rewards[[i for i in range(len(ro)) if ro.problem_of[i] == k]].sum()) for k in range(len(ro.problems))
    ]
    labels = [p.uid for p in ro.problems]
    ax.bar(range(len(correct)), correct, color=GREEN)
    ax.bar(range(len(correct)), [G - c for c in correct], bottom=correct, color=RED, alpha=0.5)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel(f"solutions (of {G})", fontsize=8)
    ax.set_title("correct (green) and wrong (red) solutions per problem", fontsize=9)
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
