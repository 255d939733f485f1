"""The explain report: one self-contained HTML file (inline CSS, PNGs as data URIs, no JavaScript)
and the same numbers as JSON.

    render(result) -> str               the HTML document.
    write_report(result, path) -> Path
    write_json(result, path) -> Path    config, problems, rollouts, every section's metrics/data/tables.
    format_number(x) -> str             how the report prints a number in tables and tooltips.
    safe_text(s) -> str                 escaped text, control characters shown as symbols.

Everything that comes from the model, the tokenizer or the problem file is untrusted: every piece
of text and every attribute value goes through :func:`safe_text` (``html.escape`` after mapping
C0 control characters other than tab and newline to their Unicode control pictures, e.g. ``\r``
-> U+240D, which HTML does not allow raw).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from html import escape
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["render", "write_report", "write_json", "format_number", "safe_text", "shade"]

GREEN, RED = (22, 163, 74), (220, 38, 38)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#111;
line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:40px;border-bottom:2px solid #e5e7eb;padding-bottom:4px}
h3{margin-top:28px}table{border-collapse:collapse;margin:8px 0 16px;font-size:.86em}
td,th{border:1px solid #d1d5db;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f3f4f6}
.meta td:first-child{font-weight:600;white-space:nowrap}.paper{color:#4b5563;font-size:.9em;margin-top:-6px}
.tok{white-space:pre-wrap;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82em;
line-height:1.7;padding:6px 8px;border:1px solid #e5e7eb;border-radius:4px;background:#fff}
.tok span{border-radius:2px}.sp{color:#9ca3af;font-style:italic}
.rollout{border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px;margin:10px 0;background:#fafafa}
.rhead{font-size:.9em;margin-bottom:4px}.ok{color:#15803d;font-weight:700}.bad{color:#b91c1c;font-weight:700}
details{margin:4px 0}summary{cursor:pointer;font-size:.88em;color:#374151}
.question{white-space:pre-wrap;background:#f9fafb;border-left:3px solid #9ca3af;padding:6px 10px}
.legend span{padding:1px 6px;margin-right:6px;border-radius:3px}.note{color:#4b5563;font-size:.88em}
figure{margin:10px 0}figcaption{font-size:.85em;color:#4b5563}img{max-width:100%}
nav a{margin-right:12px}
"""


_CONTROL = {c: 0x2400 + c for c in range(32) if c not in (9, 10)} | {0x7F: 0x2421}


def safe_text(value: Any) -> str:
    """``html.escape`` (quotes included) of ``str(value)``, control characters made visible."""
    return escape(str(value).translate(_CONTROL), quote=True)


def format_number(x: Any) -> str:
    """Integers as they are, floats with 4 decimals (NaN as "nan")."""
    if isinstance(x, bool) or x is None:
        return "" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4f}"
    return str(x)


def shade(value: float, center: float, scale: float) -> str:
    """CSS background for a value: green above ``center``, red below, opacity |value - center| / scale."""
    d = value - center
    if not math.isfinite(d) or scale <= 0 or abs(d) < 1e-12:
        return ""
    r, g, b = GREEN if d > 0 else RED
    return f"background:rgba({r},{g},{b},{0.08 + 0.72 * min(1.0, abs(d) / scale):.3f})"


def _img(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = f"<figcaption>{safe_text(title)}</figcaption>"
    return f'<figure><img alt="{safe_text(title)}" src="data:image/png;base64,{data}">{caption}</figure>'


def _table(columns: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{safe_text(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{safe_text(format_number(c))}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><tr>{head}</tr>{body}</table>"


def _tokens(pieces: list[str], values: list[float], tooltips: list[str], center: float, scale: float, special) -> str:
    out = []
    for piece, value, tip, is_special in zip(pieces, values, tooltips, special, strict=True):
        style = shade(value, center, scale)
        cls = ' class="sp"' if is_special else ""
        style_attr = f' style="{style}"' if style else ""
        out.append(f'<span{cls}{style_attr} title="{safe_text(tip)}">{safe_text(piece)}</span>')
    return '<div class="tok">' + "".join(out) + "</div>"


def _scale(values, center: float) -> float:
    finite = [abs(v - center) for v in values if math.isfinite(v)]
    return max(finite, default=0.0)


def _meta(result) -> str:
    cfg = result.config
    versions = []
    for pkg in ("verl-credit", "verl", "torch", "transformers"):
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            continue
    rows = [
        ["model", result.model_name],
        [
            "problems",
            f"{len(result.rollouts.problems)} from {result.problems_source} (first index {cfg.first_problem})",
        ],
        [
            "sampling",
            f"{cfg.group_size} solutions per problem, temperature {cfg.temperature}, "
            f"up to {cfg.max_new_tokens} new tokens, seed {cfg.seed}",
        ],
        ["grading", result.grading],
        ["estimators", ", ".join(s.key for s in result.sections)],
        ["credit options", json.dumps(cfg.credit) if cfg.credit else "defaults (see docs/configuration.md)"],
        ["time", ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())],
        ["versions", ", ".join(versions)],
    ]
    return (
        '<table class="meta">'
        + "".join(f"<tr><td>{safe_text(k)}</td><td>{safe_text(str(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _section(section, scale_note: str) -> str:
    parts = [f'<h2 id="{safe_text(section.key)}">{safe_text(section.title)}</h2>']
    parts.append(f'<p class="paper">{safe_text(section.paper)}</p><p>{safe_text(section.description)}</p>')
    if section.metrics:
        rows = [[k, float(v)] for k, v in sorted(section.metrics.items())]
        parts.append("<details><summary>metrics (as logged under credit/ in a run)</summary>")
        parts.append(_table(["metric", "value"], rows) + "</details>")
    for title, png in section.figures:
        parts.append(_img(title, png))
    for strip in section.strips:
        scale = _scale(strip.values, strip.center)
        parts.append(f"<p>{safe_text(strip.title)}</p>")
        parts.append(
            _tokens(strip.pieces, strip.values, strip.tooltips, strip.center, scale, [False] * len(strip.pieces))
        )
    for table in section.tables:
        parts.append(f"<h3>{safe_text(table.title)}</h3>")
        if table.note:
            parts.append(f'<p class="note">{safe_text(table.note)}</p>')
        if table.rows:
            parts.append(_table(table.columns, table.rows))
    if section.views:
        parts.append(
            f'<p class="note">Token views: {safe_text(", ".join(v.title for v in section.views))}. '
            f'{safe_text(scale_note)} <a href="#rollouts">See them on the rollouts.</a></p>'
        )
    return "\n".join(parts)


def render(result) -> str:
    """The whole report as one HTML string."""
    from verl_credit.explain.plots import summary_figures
    from verl_credit.explain.sections import token_pieces

    ro, tok = result.rollouts, result.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    _, mask = ro.padded(pad)
    special_ids = {int(i) for i in getattr(tok, "all_special_ids", [])}
    pieces = [token_pieces(tok, r.tolist()) for r in ro.responses]
    views = [(s, v) for s in result.sections for v in s.views]
    scales = {}
    for _, v in views:
        vals = v.values[mask.bool()].float().tolist()
        scales[id(v)] = _scale(vals, v.center)

    n_correct = int(ro.rewards.sum())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>verl-credit explain: token-level credit</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>verl-credit explain: where each estimator puts the credit</h1>",
        f"<p>{len(ro)} solutions to {len(ro.problems)} problems, {n_correct} correct. Each solution's tokens are "
        "shaded by each estimator's advantage or weight: <b>green</b> = more credit (positive advantage, weight "
        "above 1, significant), <b>red</b> = negative advantage, weight below 1, insignificant; stronger colour = "
        "larger value, scaled per view. Hover a token for its value.</p>",
        '<p class="legend"><span style="'
        + shade(1, 0, 1)
        + '">positive / above</span><span style="'
        + shade(-1, 0, 1)
        + '">negative / below</span><span style="'
        + shade(0.3, 0, 1)
        + '">small</span></p>',
        "<nav>"
        + "".join(f'<a href="#{safe_text(s.key)}">{safe_text(s.key)}</a>' for s in result.sections)
        + '<a href="#rollouts">rollouts</a></nav>',
        _meta(result),
    ]
    for title, png in summary_figures(result):
        parts.append(_img(title, png))
    for section in result.sections:
        parts.append(_section(section, "Colour scale: per view, the largest |value - centre| is full colour."))

    parts.append('<h2 id="rollouts">Problems and rollouts</h2>')
    for k, problem in enumerate(ro.problems):
        members = [i for i in range(len(ro)) if ro.problem_of[i] == k]
        right = int(sum(float(ro.rewards[i]) for i in members))
        parts.append(f'<h3 id="problem-{k}">{safe_text(problem.uid)}: {right}/{len(members)} correct</h3>')
        parts.append(f'<div class="question">{safe_text(problem.question)}</div>')
        parts.append(f"<p>Ground truth: <b>{safe_text(problem.ground_truth)}</b></p>")
        for i in members:
            ok = float(ro.rewards[i]) > 0
            n = int(mask[i].sum())
            state = "ended with eos" if ro.finished[i] else f"cut at {n} tokens"
            parts.append(
                f'<div class="rollout" id="rollout-{i}"><div class="rhead">rollout {safe_text(ro.uids[i])}.{i} '
                f'· <span class="{"ok" if ok else "bad"}">{"correct" if ok else "wrong"}</span> '
                f"· reward {format_number(float(ro.rewards[i]))} · {n} tokens · {safe_text(state)}</div>"
            )
            special = [int(t) in special_ids for t in ro.responses[i].tolist()]
            for section, view in views:
                values = view.values[i, :n].float().tolist()
                tips = [f"{view.label}={v:+.4f}" for v in values]
                opened = " open" if view.open else ""
                parts.append(f"<details{opened}><summary>{safe_text(section.key)}: {safe_text(view.title)}</summary>")
                parts.append(_tokens(pieces[i], values, tips, view.center, scales[id(view)], special) + "</details>")
            parts.append(
                f'<details><summary>text</summary><pre class="tok">{safe_text(ro.texts[i])}</pre></details></div>'
            )
    parts.append('<p class="note">Written by <code>verl-credit explain</code>. No JavaScript; images are inline.</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render(result), encoding="utf-8")
    return path


def _clean(x: Any) -> Any:
    """JSON-safe: NaN / inf -> None, tuples -> lists, dataclasses -> dicts."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _clean(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(result, path: str | Path) -> Path:
    """The report's numbers: config, problems, rollouts (text, token ids, reward) and every section."""
    ro = result.rollouts
    doc = {
        "config": result.config,
        "credit": result.credit,
        "model": result.model_name,
        "problems_source": result.problems_source,
        "problems": [
            {"uid": p.uid, "question": p.question, "ground_truth": p.ground_truth, "data_source": p.data_source}
            for p in ro.problems
        ],
        "rollouts": [
            {
                "group": ro.uids[i],
                "problem": ro.problem_of[i],
                "text": ro.texts[i],
                "token_ids": ro.responses[i].tolist(),
                "reward": float(ro.rewards[i]),
                "finished": ro.finished[i],
            }
            for i in range(len(ro))
        ],
        "timings": result.timings,
        "sections": [
            {
                "key": s.key,
                "title": s.title,
                "metrics": s.metrics,
                "data": s.data,
                "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows} for t in s.tables],
            }
            for s in result.sections
        ],
    }
    path = Path(path)
    path.write_text(json.dumps(_clean(doc), indent=1, ensure_ascii=False), encoding="utf-8")
    return path
