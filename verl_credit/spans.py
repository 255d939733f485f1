"""Where the final answer and the reasoning spans are, in token positions of a response.

Public API:
    SpanParams                          -- options (the span part of ``credit.counterfactual``).
    ResponseSpans                       -- answer token range and reasoning span ranges of one response.
    token_char_offsets(tokenizer, ids)  -- (text, starts, ends): character range of every token.
    find_answer_start(text, params)     -- character where the final answer starts, or None.
    find_spans(tokenizer, ids_list, params) -> list[ResponseSpans]

Rules (METHODS.md section 2):
    answer start: the first of ``answer_markers`` ("final answer", "####"; case-insensitive),
        else the first ``boxed_marker`` (``\\boxed{``), else no answer. The answer runs from the
        token holding that character to the last valid token that is not a special token.
    spans, inside the reasoning only (before the answer): arithmetic expressions
        ``n op n [op n ...] = n`` first, then sentences (cut after ``.``, ``!``, ``?`` followed
        by white space, and at line breaks) of at least ``min_sentence_tokens`` tokens that do
        not overlap an arithmetic span. A sentence longer than ``max_span_tokens`` is cut into
        consecutive pieces of at most that many tokens (so all of it can be masked). At most
        ``max_spans`` spans: arithmetic first, then sentences, each in order of appearance.
Token ranges are half-open ``[start, end)`` over response positions. Offsets come from the
tokenizer itself (re-encoding the decoded text, or prefix decoding when that does not reproduce
the ids), so byte-level BPE tokens that hold part of a number or a leading space map correctly.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from verl_credit.core.checks import is_int

__all__ = [
    "SpanParams",
    "ResponseSpans",
    "span_params_of",
    "token_char_offsets",
    "find_answer_start",
    "find_spans",
]

_NUM = r"\$?\(?-?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)\)?%?"
_OP = r"\s*[-+*/×÷x]\s*"
ARITHMETIC = re.compile(rf"{_NUM}(?:{_OP}{_NUM})+\s*=\s*{_NUM}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass
class SpanParams:
    """Span and answer detection options.

    Attributes:
        answer_markers: case-insensitive strings whose first occurrence starts the final answer.
        boxed_marker: used when no answer marker occurs. Default ``\\boxed{``.
        max_spans: most spans per response. Default 10.
        max_span_tokens: longest span in tokens; longer sentences are cut in pieces. Default 50.
        min_sentence_tokens: shortest sentence span in tokens. Default 5.
    """

    answer_markers: list[str] = field(default_factory=lambda: ["final answer", "####"])
    boxed_marker: str = "\\boxed{"
    max_spans: int = 10
    max_span_tokens: int = 50
    min_sentence_tokens: int = 5

    def __post_init__(self):
        for name in ("max_spans", "max_span_tokens", "min_sentence_tokens"):
            value = getattr(self, name)
            if not (is_int(value) and value >= 1):
                raise ValueError(f"credit.counterfactual.{name} must be an integer >= 1, got {value!r}")
        if not all(isinstance(m, str) and m for m in self.answer_markers):
            raise ValueError(
                f"credit.counterfactual.answer_markers must be non-empty strings, got {self.answer_markers!r}"
            )


def span_params_of(config: SpanParams) -> dict:
    """The span settings of ``config`` (a SpanParams or a subclass such as CounterfactualConfig) as plain data."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(SpanParams)}


@dataclass
class ResponseSpans:
    """answer: (start, end) token range of the final answer, or None; spans: sorted, disjoint
    (start, end) token ranges inside the reasoning; kinds: "arithmetic" or "sentence" per span;
    text: the decoded response; length: valid tokens before any trailing special token."""

    answer: tuple[int, int] | None
    spans: list[tuple[int, int]]
    kinds: list[str]
    text: str = ""
    length: int = 0

    @property
    def reasoning_end(self) -> int:
        """First token position after the reasoning (the answer start, or ``length``)."""
        return self.answer[0] if self.answer else self.length


def token_char_offsets(tokenizer, ids: Sequence[int]) -> tuple[str, np.ndarray, np.ndarray]:
    """Decoded text and the character range [starts[k], ends[k]) of every token k.

    Shapes: ids (T,) -> starts (T,), ends (T,) int64.
    """
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) == ids:
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        return text, offsets[:, 0], offsets[:, 1]
    # the ids are not the canonical encoding of their text: prefix lengths give the boundaries
    prefixes = tokenizer.batch_decode(
        [ids[: k + 1] for k in range(len(ids))], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    ends = np.array([len(p) for p in prefixes], dtype=np.int64)
    ends = np.maximum.accumulate(ends) if len(ends) else ends
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64) if len(ends) else ends
    return text, starts, ends


def find_answer_start(text: str, params: SpanParams) -> int | None:
    """Character index where the final answer starts, or None when the response has none."""
    lowered = text.lower()
    hits = [lowered.find(m.lower()) for m in params.answer_markers]
    hits = [h for h in hits if h >= 0]
    if hits:
        return min(hits)
    boxed = text.find(params.boxed_marker)
    return boxed if boxed >= 0 else None


def _char_to_tokens(c0: int, c1: int, starts: np.ndarray, ends: np.ndarray) -> tuple[int, int]:
    """Tokens overlapping characters [c0, c1): (first, last + 1)."""
    first = int(np.searchsorted(ends, c0, side="right"))
    last = int(np.searchsorted(starts, c1, side="left"))
    return first, last


def _spans_of_one(tokenizer, ids: Sequence[int], params: SpanParams, special: set[int]) -> ResponseSpans:
    text, starts, ends = token_char_offsets(tokenizer, ids)
    T = len(ids)
    valid_end = T
    while valid_end > 0 and int(ids[valid_end - 1]) in special:
        valid_end -= 1
    answer_char = find_answer_start(text, params)
    answer = None
    reasoning_end = valid_end
    if answer_char is not None:
        a0 = int(np.searchsorted(ends, answer_char, side="right"))
        if a0 < valid_end:
            answer, reasoning_end = (a0, valid_end), a0
    reasoning_chars = int(starts[reasoning_end]) if reasoning_end < T else len(text)

    arith: list[tuple[int, int]] = []
    for m in ARITHMETIC.finditer(text, 0, reasoning_chars):
        t0, t1 = _char_to_tokens(m.start(), m.end(), starts, ends)
        t1 = min(t1, reasoning_end)
        if t1 > t0:
            arith.append((t0, min(t1, t0 + params.max_span_tokens)))
    taken = np.zeros(T + 1, dtype=bool)
    for t0, t1 in arith:
        taken[t0:t1] = True

    sentences: list[tuple[int, int]] = []
    cut_points = [0] + [m.end() for m in _SENTENCE_END.finditer(text, 0, reasoning_chars)] + [reasoning_chars]
    for c0, c1 in zip(cut_points[:-1], cut_points[1:], strict=True):
        if not text[c0:c1].strip():
            continue
        t0, t1 = _char_to_tokens(c0, c1, starts, ends)
        t1 = min(t1, reasoning_end)
        if t1 - t0 < params.min_sentence_tokens or taken[t0:t1].any():
            continue
        for p0 in range(t0, t1, params.max_span_tokens):
            sentences.append((p0, min(t1, p0 + params.max_span_tokens)))

    chosen = (arith + sentences)[: params.max_spans]
    kinds = ["arithmetic"] * min(len(arith), params.max_spans) + ["sentence"] * max(0, len(chosen) - len(arith))
    order = sorted(range(len(chosen)), key=lambda k: chosen[k][0])
    # disjoint by construction except arithmetic matches sharing a boundary token: keep the first
    spans, span_kinds, last_end = [], [], 0
    for k in order:
        s0, s1 = chosen[k]
        s0 = max(s0, last_end)
        if s1 > s0:
            spans.append((s0, s1))
            span_kinds.append(kinds[k])
            last_end = s1
    return ResponseSpans(answer=answer, spans=spans, kinds=span_kinds, text=text, length=valid_end)


def find_spans(tokenizer, ids_list: Sequence[Sequence[int]], params: SpanParams | None = None) -> list[ResponseSpans]:
    """Answer and reasoning spans of each response (valid token ids only, no padding).

    Shapes: ids_list: B sequences of token ids -> B ResponseSpans.
    """
    params = params or SpanParams()
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    return [_spans_of_one(tokenizer, ids, params, special) for ids in ids_list]
