"""The explain report: one self-contained HTML file (inline CSS, PNGs as data URIs, no JavaScript)
and the same numbers as JSON.

    render(result) -> str               the HTML document.
    write_report(result, path) -> Path
    write_json(result, path) -> Path    config, problems, rollouts, every section's metrics/data/tables,
                                        the comparison (chosen rollout, rank correlations).
    format_number(x), safe_text(s), shade(...)   from :mod:`verl_credit.explain.markup`.

Everything that comes from the model, the tokenizer or the problem file is untrusted: every piece
of text and every attribute value goes through ``safe_text`` (see :mod:`verl_credit.explain.markup`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from verl_credit.explain.blocks import Layout, compare_block, grading_flag, rollout_block
from verl_credit.explain.markup import format_number, safe_text, shade, table
from verl_credit.explain.markup import tokens as tokens_line

__all__ = ["render", "write_report", "write_json", "format_number", "safe_text", "shade", "comparison"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#111;
line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:40px;border-bottom:2px solid #e5e7eb;padding-bottom:4px}
h3{margin-top:28px}table{border-collapse:collapse;margin:8px 0 16px;font-size:.86em}
td,th{border:1px solid #d1d5db;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f3f4f6}
.meta td:first-child{font-weight:600;white-space:nowrap}.paper{color:#4b5563;font-size:.9em;margin-top:-6px}
.tok{white-space:pre-wrap;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82em;
line-height:1.7;padding:6px 8px;border:1px solid #e5e7eb;border-radius:4px;background:#fff;overflow-wrap:anywhere}
.tok span{border-radius:2px}.sp{color:#9ca3af;font-style:italic}.tok span.drop{color:#a1a1aa;background:#f4f4f5}
.rollout{border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px;margin:10px 0;background:#fafafa}
.rhead{font-size:.9em;margin-bottom:4px}.ok{color:#15803d;font-weight:700}.bad{color:#b91c1c;font-weight:700}
.cut{color:#92400e;background:#fef3c7;font-weight:700;padding:0 4px;border-radius:3px}
.flag{color:#92400e;background:#fffbeb;border-left:3px solid #f59e0b;padding:3px 8px;font-size:.86em;margin:4px 0}
.banner{background:#fef2f2;border:2px solid #dc2626;border-radius:6px;padding:10px 14px;margin:14px 0}
.summary{background:#f0fdf4;border:1px solid #bbf7d0;border-radius:6px;padding:8px 14px;margin:12px 0}
details{margin:4px 0}summary{cursor:pointer;font-size:.88em;color:#374151}
.question{white-space:pre-wrap;background:#f9fafb;border-left:3px solid #9ca3af;padding:6px 10px}
.note{color:#4b5563;font-size:.88em}
figure{margin:10px 0}figcaption{font-size:.85em;color:#4b5563}img{max-width:100%}
nav a{margin-right:12px}
.cbars{margin:4px 0 6px}.cbar{display:flex;align-items:center;gap:2px;font-size:.75em;margin:2px 0}
.cname{width:190px;color:#374151}.sw{display:inline-block;min-width:52px;text-align:center;padding:1px 2px;
border:1px solid #e5e7eb;border-radius:2px;font-family:ui-monospace,Menlo,Consolas,monospace}.cnone{color:#6b7280}
.cgrid{display:grid;grid-template-columns:repeat(var(--cols),minmax(0,1fr));gap:6px;margin:8px 0}
.ccol .tok{font-size:.72em;line-height:1.6;padding:4px 5px}
.chead{font-size:.78em;font-weight:600;color:#374151;min-height:4.6em}
.rhos{display:flex;flex-wrap:wrap;gap:18px}.rhos p{margin:4px 0 0;font-size:.86em}
"""


def _img(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = f"<figcaption>{safe_text(title)}</figcaption>"
    return f'<figure><img alt="{safe_text(title)}" src="data:image/png;base64,{data}">{caption}</figure>'


def _quoted(values) -> str:
    return ", ".join(f'"{v}"' if isinstance(v, str) else json.dumps(v) for v in values)


def _setting(value) -> str:
    """A credit value as the user types it (strings without repr escapes: one backslash stays one)."""
    if isinstance(value, list | tuple):
        return "[" + _quoted(value) + "]"
    return str(value)


def _flat(credit: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in credit.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key} = {_setting(value)}")
    return out


def _meta(result) -> str:
    cfg = result.config
    versions = []
    for pkg in ("verl-credit", "verl", "torch", "transformers"):
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            continue
    demo = "; ".join(f"{k} = {_setting(v)}" for k, v in result.demo_settings.items())
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
        ["credit options", "; ".join(_flat(cfg.credit)) if cfg.credit else "defaults (see docs/configuration.md)"],
    ]
    if demo:
        rows.append(
            [
                "demo settings",
                f'{demo} (explain\'s default, a demo setting: SmolLM2 closes with "So, the answer is ..." rather than '
                'a marker of the paper; training keeps the library default "final answer", "####"; '
                "--set counterfactual.answer_markers=[...] replaces it)",
            ]
        )
    rows += [
        ["time", ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())],
        ["versions", ", ".join(versions)],
    ]
    return (
        '<table class="meta">'
        + "".join(f"<tr><td>{safe_text(k)}</td><td>{safe_text(str(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )


_LONG = 30  # a table with more rows is folded (<details>)


def _section(section) -> str:
    parts = [f'<h2 id="{safe_text(section.key)}">{safe_text(section.title)}</h2>']
    parts.append(f'<p class="paper">{safe_text(section.paper)}</p><p>{safe_text(section.description)}</p>')
    if section.metrics:
        rows = [[k, float(v)] for k, v in sorted(section.metrics.items())]
        parts.append("<details><summary>metrics (as logged under credit/ in a run)</summary>")
        parts.append(table(["metric", "value"], rows) + "</details>")
    for title, png in section.figures:
        parts.append(_img(title, png))
    for strip in section.strips:
        finite = [abs(v - strip.center) for v in strip.values if math.isfinite(v)]
        scale = max(finite, default=0.0)
        parts.append(f"<p>{safe_text(strip.title)}</p>")
        parts.append(
            tokens_line(strip.pieces, strip.values, strip.tooltips, strip.center, scale, [False] * len(strip.pieces))
        )
    for t in section.tables:
        parts.append(f"<h3>{safe_text(t.title)}</h3>")
        if t.note:
            parts.append(f'<p class="note">{safe_text(t.note)}</p>')
        if len(t.rows) > _LONG:
            parts.append(f"<details><summary>the {len(t.rows)} rows</summary>{table(t.columns, t.rows)}</details>")
        elif t.rows:
            parts.append(table(t.columns, t.rows))
    if section.views:
        parts.append(
            f'<p class="note">Token views: {safe_text(", ".join(v.title for v in section.views))}. '
            "Colour: one scale per rollout and unit, shared by its views in that unit (see its colour bars). "
            '<a href="#compare">Side by side</a> · <a href="#rollouts">every rollout</a>.</p>'
        )
    return "\n".join(parts)


def comparison(result, layout: Layout | None = None) -> dict[str, Any]:
    """The side-by-side rollout, why it was chosen, the per-group rank correlations, the mixed groups
    and the views without any signal (explain.json's "comparison")."""
    from verl_credit.explain.compare import choose_rollout, main_views, mixed_groups, rank_correlations, silent_views

    ro = result.rollouts
    layout = layout or Layout(result)
    correct = [bool(r > result.credit.correct_threshold) for r in ro.rewards.tolist()]
    measured = _measured(result)
    if result.config.compare_rollout is not None:
        index, why = result.config.compare_rollout, "chosen with --compare-rollout"
    else:
        index, why = choose_rollout(correct, list(ro.finished), list(ro.uids), measured)
    views = main_views(result.sections)
    return {
        "rollout": index,
        "why": why,
        "estimators": [k for k, _ in views],
        "rank_correlation": rank_correlations(views, layout.mask, list(ro.uids)),
        "rank_correlation_method": "scipy.stats.spearmanr over the valid tokens of each group's rollouts",
        "mixed_groups": mixed_groups(list(ro.uids), correct),
        "silent_views": silent_views(views, layout.mask),
    }


def _measured(result) -> list[bool] | None:
    cf = next((s for s in result.sections if s.key == "counterfactual"), None)
    if cf is None or "coverage" not in cf.data:
        return None
    return [c["status"] == "spans measured" for c in cf.data["coverage"]]


def _summary(result, comp: dict) -> list[str]:
    ro = result.rollouts
    n_correct = int(sum(float(r) > result.credit.correct_threshold for r in ro.rewards.tolist()))
    cut = [i for i in range(len(ro)) if grading_flag(result, i)]
    lines = [
        f"{len(ro)} solutions to {len(ro.problems)} problems; {n_correct} graded correct"
        + (
            f", {len(cut)} of them cut at the token limit (flagged: the grader read the last number of an unfinished "
            "text)"
            if cut
            else ""
        )
        + f"; {sum(not f for f in ro.finished)} of {len(ro)} cut at the token limit in all.",
        f"Groups with both correct and wrong solutions (where GRPO and KTAE have a signal): "
        f"{len(comp['mixed_groups'])} of {len(set(ro.uids))}.",
    ]
    lines.extend(_filter_summary(result))
    cf = next((s for s in result.sections if s.key == "counterfactual"), None)
    if cf is not None:
        why = [f"{reason} ({n})" for reason, n in cf.data["coverage_counts"].items() if reason not in _STATUSES]
        lines.append(
            f"Counterfactual: spans measured in {cf.data['measured']} of {len(ro)} rollouts"
            + (f"; the others, by reason (count): {'; '.join(why)}" if why else "")
            + "."
        )
    return lines


_STATUSES = ("spans measured", "answer only", "not scored")


def _filter_summary(result) -> list[str]:
    """The high-entropy token filter's lines: kept fraction, threshold, and per estimator the share of
    its credited tokens and of its advantage mass that the filter keeps."""
    tf = getattr(result, "token_filter", None)
    if tf is None:
        return []
    source = (
        f"credit.token_filter.entropy_quantile={tf.quantile:g}"
        if tf.configured
        else f"q={tf.quantile:g}, the paper's: the filter is off in this config, --set token_filter.entropy_quantile=Q"
    )
    m = tf.metrics
    lines = [
        f"High-entropy token filter ({source}; entropy at temperature {tf.temperature:g} from this run's forward): "
        f"keeps {m['kept_fraction']:.1%} of the valid tokens (entropy >= {tf.tau:.3f}; mean entropy kept "
        f"{m['entropy_kept/mean']:.2f}, dropped {m['entropy_dropped/mean']:.2f}). The same tokens for every "
        "estimator; the dropped ones are greyed in the advantage views."
    ]
    if tf.rows:
        per = [
            f"{r['estimator']} {format_number(r['kept_fraction_of_credited'])} of its credited tokens, "
            f"{format_number(r['advantage_mass_kept'])} of its |A|"
            for r in tf.rows
        ]
        lines.append("Kept by the filter, per estimator: " + "; ".join(per) + ".")
    return lines


def _banner(result, comp: dict) -> str:
    if comp["mixed_groups"]:
        return ""
    silent = comp["silent_views"]
    alive = [k for k in comp["estimators"] if k not in silent]
    return (
        '<div class="banner"><b>No group is mixed</b>: every group is all correct or all wrong, so the outcome '
        "advantage is 0 everywhere"
        + (f" and {', '.join(silent)} give every token no signal (all at the centre)" if silent else "")
        + (f". Still non-zero: {', '.join(alive)} (they do not only rest on the outcome contrast)" if alive else "")
        + ". Sample more solutions (--group-size) or other problems to see credit assigned.</div>"
    )


def render(result) -> str:
    """The whole report as one HTML string."""
    from verl_credit.explain.plots import summary_figures

    ro = result.rollouts
    layout = Layout(result)
    comp = comparison(result, layout)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>verl-credit explain: token-level credit</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>verl-credit explain: where each estimator puts the credit</h1>",
        _banner(result, comp),
        '<div class="summary">' + "".join(f"<p>{safe_text(x)}</p>" for x in _summary(result, comp)) + "</div>",
        "<p>Every token view shows the advantage the policy loss would give the token (A; for the weighting "
        "methods the effective A x w), except the length reward's significance s. <b>Green</b>: a positive "
        "advantage, the token is made more likely; <b>red</b>: negative, made less likely. On a wrong solution "
        "A < 0, so deeper red means more blame. One colour scale per rollout, shared by all its advantage views "
        "(the colour bar gives the numbers); hover a token for its value. <b>Greyed</b> tokens in the advantage "
        "views: those the high-entropy token filter would drop (credit.token_filter; kept fraction in the "
        "summary).</p>",
        "<nav>"
        + '<a href="#compare">side by side</a>'
        + "".join(f'<a href="#{safe_text(s.key)}">{safe_text(s.key)}</a>' for s in result.sections)
        + '<a href="#rollouts">rollouts</a></nav>',
        _meta(result),
    ]
    for title, png in summary_figures(result):
        parts.append(_img(title, png))
    if len(ro):
        parts.append(compare_block(layout, comp["rollout"], comp["why"], comp["rank_correlation"]))
    for section in result.sections:
        parts.append(_section(section))

    parts.append('<h2 id="rollouts">Problems and rollouts</h2>')
    notes = _coverage_notes(result)
    for k, problem in enumerate(ro.problems):
        members = [i for i in range(len(ro)) if ro.problem_of[i] == k]
        right = sum(float(ro.rewards[i]) > result.credit.correct_threshold for i in members)
        cut = sum(bool(grading_flag(result, i)) for i in members)
        extra = f" ({cut} of them cut at the token limit)" if cut else ""
        parts.append(f'<h3 id="problem-{k}">{safe_text(problem.uid)}: {right}/{len(members)} correct{extra}</h3>')
        parts.append(f'<div class="question">{safe_text(problem.question)}</div>')
        parts.append(f"<p>Ground truth: <b>{safe_text(problem.ground_truth)}</b></p>")
        for i in members:
            parts.append(rollout_block(layout, i, notes[i]))
    parts.append('<p class="note">Written by <code>verl-credit explain</code>. No JavaScript; images are inline.</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _coverage_notes(result) -> list[str]:
    cf = next((s for s in result.sections if s.key == "counterfactual"), None)
    if cf is None:
        return [""] * len(result.rollouts)
    out = []
    for c in cf.data["coverage"]:
        note = f"counterfactual: {c['status']}" + (f" ({c['reason']})" if c["reason"] else "")
        out.append(note + (f", {c['spans']} spans" if c["status"] == "spans measured" else ""))
    return out


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
                "grading_flag": grading_flag(result, i),
            }
            for i in range(len(ro))
        ],
        "demo_settings": result.demo_settings,
        "token_filter": result.token_filter.to_json() if getattr(result, "token_filter", None) is not None else None,
        "timings": result.timings,
        "comparison": comparison(result),
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
