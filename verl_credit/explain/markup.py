"""HTML pieces of the explain report: escaping, numbers, token shading, colour bars, tables.

    safe_text(s) -> str              escaped text, control characters shown as symbols.
    format_number(x) -> str          how the report prints a number in tables and tooltips.
    shade(value, center, scale)      CSS background of a token (green above the centre, red below).
    colour_bar(name, center, scale)  a row of swatches with their numbers: the key of one colour scale.
    tokens(pieces, values, tips, center, scale, special) -> a shaded token line.
    table(columns, rows) -> str

Everything that comes from the model, the tokenizer or the problem file is untrusted: every piece
of text and every attribute value goes through :func:`safe_text` (``html.escape`` after mapping
C0 control characters other than tab and newline to their Unicode control pictures, e.g. ``\\r``
-> U+240D, which HTML does not allow raw).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

__all__ = ["GREEN", "RED", "safe_text", "format_number", "shade", "colour_bar", "tokens", "table"]

GREEN, RED = (22, 163, 74), (220, 38, 38)
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


def _tick(value: float) -> str:
    return "0" if abs(value) < 1e-12 else f"{value:+.3g}"


def colour_bar(name: str, center: float, scale: float, steps: int = 4) -> str:
    """The key of one colour scale: 2 * steps + 1 swatches from ``center - scale`` (full red) to
    ``center + scale`` (full green), each labelled with its value. A zero scale (every value at the
    centre) says so instead."""
    label = f'<span class="cname">{safe_text(name)}</span>'
    if not (math.isfinite(scale) and scale > 0):
        return f'<div class="cbar">{label}<span class="cnone">every value {_tick(center)}: no colour</span></div>'
    cells = []
    for k in range(-steps, steps + 1):
        value = center + scale * k / steps
        style = shade(value, center, scale)
        cells.append(f'<span class="sw" style="{style}">{safe_text(_tick(value))}</span>')
    return f'<div class="cbar">{label}{"".join(cells)}</div>'


def tokens(
    pieces: list[str], values: list[float], tips: list[str], center: float, scale: float, special, dropped=None
) -> str:
    """One line of tokens, each shaded by its value, with its tooltip; special tokens in grey italics;
    ``dropped`` tokens (the high-entropy filter's) greyed, unshaded."""
    out = []
    dropped = dropped if dropped is not None else [False] * len(pieces)
    for piece, value, tip, is_special, drop in zip(pieces, values, tips, special, dropped, strict=True):
        style = "" if drop else shade(value, center, scale)
        names = [n for n, on in (("sp", is_special), ("drop", drop)) if on]
        cls = f' class="{" ".join(names)}"' if names else ""
        style_attr = f' style="{style}"' if style else ""
        out.append(f'<span{cls}{style_attr} title="{safe_text(tip)}">{safe_text(piece)}</span>')
    return '<div class="tok">' + "".join(out) + "</div>"


def table(columns: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{safe_text(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{safe_text(format_number(c))}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><tr>{head}</tr>{body}</table>"
