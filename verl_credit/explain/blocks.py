"""The token-level parts of the explain report: each rollout with every estimator's view, and one
rollout with every estimator side by side.

    Layout(result)                 the rollouts' token texts, valid lengths, special tokens, every view,
                                   and one colour scale per rollout and scale name (shared by its views).
    rollout_block(layout, i, note) the rollout's header, colour bars, views (one per <details>), text.
    compare_block(layout, i, why, correlations) the side-by-side view and the rank correlations.
    grading_flag(result, i)        "" or why the grade of rollout i is doubtful (correct but cut).

Colour: a view's value is shaded around its centre (0 for advantages): green above, red below,
the full colour at the largest |value - centre| of that rollout over every view of the same scale
(all the advantage views of one rollout share one scale, so their colours compare).
"""

from __future__ import annotations

from verl_credit.explain.markup import colour_bar, format_number, safe_text, table, tokens

__all__ = ["Layout", "rollout_block", "compare_block", "grading_flag"]

SCALE_NAMES = {
    "advantage": "advantage (A, K, A x w)",
    "significance": "significance s",
    "weight": "weight w",
}


class Layout:
    """What every token view of the report needs, computed once."""

    def __init__(self, result):
        from verl_credit.explain.sections import token_pieces

        ro, tok = result.rollouts, result.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.result = result
        self.mask = ro.padded(pad)[1]
        self.lengths = [int(n) for n in self.mask.sum(1)]
        special_ids = {int(i) for i in getattr(tok, "all_special_ids", [])}
        self.special = [[int(t) in special_ids for t in r.tolist()] for r in ro.responses]
        self.pieces = [token_pieces(tok, r.tolist()) for r in ro.responses]
        self.views = [(s, v) for s in result.sections for v in s.views]
        tf = getattr(result, "token_filter", None)  # the high-entropy filter: greyed in advantage views
        self.filter = tf
        self.dropped = (
            [[not bool(k) for k in tf.keep[i, :n]] for i, n in enumerate(self.lengths)] if tf is not None else None
        )
        self.scales: list[dict[str, tuple[float, float]]] = []  # per rollout: scale name -> (centre, max |d|)
        for i, n in enumerate(self.lengths):
            per: dict[str, tuple[float, float]] = {}
            for _, v in self.views:
                d = (v.values[i, :n].float() - v.center).abs()
                d = d[d.isfinite()]
                top = float(d.max()) if d.numel() else 0.0
                center, old = per.get(v.scale, (v.center, 0.0))
                per[v.scale] = (center, max(old, top))
            self.scales.append(per)

    def colour_bars(self, i: int, only: set[str] | None = None) -> str:
        bars = [
            colour_bar(SCALE_NAMES.get(name, name), center, scale)
            for name, (center, scale) in self.scales[i].items()
            if only is None or name in only
        ]
        return '<div class="cbars">' + "".join(bars) + "</div>"

    def view_tokens(self, i: int, view) -> str:
        n = self.lengths[i]
        values = view.values[i, :n].float().tolist()
        parts = {name: t[i, :n].float().tolist() for name, t in view.parts.items()}
        dropped = self.dropped[i] if self.dropped is not None and view.scale == "advantage" else None
        tips = []
        for t, value in enumerate(values):
            extra = ", ".join(f"{name}={p[t]:+.4f}" for name, p in parts.items())
            tip = f"{view.label}={value:+.4f}" + (f" ({extra})" if extra else "")
            if dropped is not None and dropped[t]:
                h = float(self.filter.entropy[i, t])
                tip += f"; dropped by the token filter (H={h:.3f} < tau={self.filter.tau:.3f})"
            tips.append(tip)
        _, scale = self.scales[i][view.scale]
        return tokens(self.pieces[i], values, tips, view.center, scale, self.special[i][:n], dropped)


def grading_flag(result, i: int) -> str:
    """Why a "correct" grade is doubtful: the solution was cut at the token limit, so the grader read
    the last number of an unfinished text."""
    ro = result.rollouts
    if float(ro.rewards[i]) > 0 and not ro.finished[i]:
        n = int(ro.responses[i].numel())
        return (
            f"graded correct, but cut at the token limit ({n} tokens, no eos): math-verify read the last number "
            "of an unfinished text"
        )
    return ""


def rollout_block(layout: Layout, i: int, note: str = "") -> str:
    result = layout.result
    ro = result.rollouts
    ok = float(ro.rewards[i]) > 0
    n = layout.lengths[i]
    flag = grading_flag(result, i)
    state = "ended with eos" if ro.finished[i] else f"cut at {n} tokens"
    grade = (
        f'<span class="cut" title="{safe_text(flag)}">correct? (cut)</span>'
        if flag
        else f'<span class="{"ok" if ok else "bad"}">{"correct" if ok else "wrong"}</span>'
    )
    parts = [
        f'<div class="rollout" id="rollout-{i}"><div class="rhead">rollout {safe_text(ro.uids[i])}.{i} · {grade} '
        f"· reward {format_number(float(ro.rewards[i]))} · {n} tokens · {safe_text(state)}"
        + (f" · {safe_text(note)}" if note else "")
        + "</div>"
    ]
    if flag:
        parts.append(f'<p class="flag">{safe_text(flag)}.</p>')
    parts.append(layout.colour_bars(i))
    for section, view in layout.views:
        opened = " open" if view.open else ""
        parts.append(f"<details{opened}><summary>{safe_text(section.key)}: {safe_text(view.title)}</summary>")
        parts.append(layout.view_tokens(i, view) + "</details>")
    parts.append(f'<details><summary>text</summary><pre class="tok">{safe_text(ro.texts[i])}</pre></details></div>')
    return "\n".join(parts)


def _correlation_table(uid: str, entry: dict) -> str:
    keys = entry["estimators"]
    rows = [
        [a, *("n/a" if r is None else f"{r:+.2f}" for r in line)] for a, line in zip(keys, entry["rho"], strict=True)
    ]
    head = f"<p>group {safe_text(uid)} ({entry['tokens']} tokens)</p>"
    return f"<div>{head}{table(['', *keys], rows, cls='rho')}</div>"


def compare_block(layout: Layout, i: int, why: str, correlations: dict[str, dict]) -> str:
    from verl_credit.explain.compare import main_views

    result = layout.result
    ro = result.rollouts
    views = main_views(result.sections)
    flag = grading_flag(result, i)
    ok = float(ro.rewards[i]) > 0
    grade = "correct? (cut)" if flag else ("correct" if ok else "wrong")
    parts = [
        '<h2 id="compare">One rollout, every estimator</h2>',
        f'<p>Rollout <a href="#rollout-{i}">{safe_text(ro.uids[i])}.{i}</a> ({safe_text(grade)}): '
        f"{safe_text(why)} (--compare-rollout picks another). Each column is one estimator's main view, "
        "all on this rollout's colour scale below; hover a token for its value.</p>",
    ]
    if flag:
        parts.append(f'<p class="flag">{safe_text(flag)}.</p>')
    parts.append(layout.colour_bars(i, {v.scale for _, v in views}))
    cells = []
    for key, view in views:
        head = f'<div class="chead">{safe_text(key)}: {safe_text(view.title)}</div>'
        cells.append(f'<div class="ccol">{head}{layout.view_tokens(i, view)}</div>')
    parts.append(f'<div class="cgrid" style="--cols:{max(1, len(views))}">' + "".join(cells) + "</div>")
    if correlations:
        parts.append("<h3>Rank correlation of the estimators' token values, per group</h3>")
        parts.append(
            '<p class="note">Spearman\'s rho (scipy.stats.spearmanr, ties at their average rank) between two '
            "estimators' main views over every valid token of the group's rollouts. n/a: one of the two is "
            "constant over the group (no ranking; e.g. GRPO and KTAE in a group that is all correct or all wrong). "
            "GRPO gives every token of a rollout one value, so its rho only measures how the others order the "
            "rollouts.</p>"
        )
        parts.append('<div class="rhos">' + "".join(_correlation_table(u, e) for u, e in correlations.items()))
        parts.append("</div>")
    return "\n".join(parts)
