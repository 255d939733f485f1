"""Where the final answer and the reasoning spans are, in token positions of a response.

Public API:
    SpanParams                          -- options (the span part of ``credit.counterfactual``).
    ResponseSpans                       -- answer token range and reasoning span ranges of one response.
    token_char_offsets(tokenizer, ids)  -- (text, starts, ends): character range of every token.
    token_anchors(text, starts, ends)   -- character of every token's first non-space character.
    find_answer_start(text, params)     -- character where the final answer starts, or None.
    find_spans(tokenizer, ids_list, params) -> list[ResponseSpans]

Rules (METHODS.md section 2):

Answer: the final answer, wherever the response mentions a marker earlier.
    A marker occurrence is an occurrence of one of ``answer_markers`` (case-insensitive; default
    "final answer", "####") or of ``boxed_marker`` (``\\boxed{``, case-sensitive). A marker made of
    ``#`` only that is followed on its line (after more ``#``, ``*``, ``_``, spaces) by a word of two
    letters or more is a markdown header (``#### Step 1``), not a marker.
    The answer starts at the LAST occurrence that only answer material follows: the text after it,
    to the end of the response, holds a letter or digit and at most ``answer_max_words`` words (a
    word: a run of two or more letters, or one CJK character; LaTeX command names such as
    ``\\boxed`` are not words). So "The final answer depends on two steps." followed by the work is
    not the answer, a marker quoted in the reasoning is not the answer, and of several ``####`` the
    last one is. Earlier occurrences that belong to the same answer statement (the text between
    the two holds no digit, no sentence end and at most 3 words: "The final answer is
    $\\boxed{18}$", "Final Answer: The final answer is 18") move the start back to the first of
    them. A response whose last marker is followed by more than ``answer_max_words`` words has no
    answer: it is all reasoning, and the counterfactual stage does not score it.
    The answer runs from the token holding its first character to the last valid token that is not
    a special token.

Spans, in the reasoning only (before the answer):
    arithmetic: the matches of ``ARITHMETIC``: ``16 - 3 - 4 = 9``; a chain ``4 * 5 = 20 + 5 = 25``
        is one span; LaTeX ``\\frac{1}{2} \\times 36 = 18`` and ``\\frac{36}{4} = 9`` (a fraction
        counts as an operation); operators ``+ - * / x × ÷ · \\times \\cdot \\div``; a number may
        carry ``$``, thousands separators, decimals and ``%``. A span ends at the last digit or unit
        of its result: ``7 * 2 = 14.`` gives ``7 * 2 = 14``, ``$10.`` gives ``$10``, ``3.5`` stays
        whole; parentheses left unclosed at either end and the opening ``$`` of inline math
        (``$4 + 5 = 9$``) are left out. No calculation crosses a line break. (These are character
        ranges: a token holding both the last digit and the full stop stays in the span whole.)
    sentences: the reasoning is cut after ``.``, ``!``, ``?`` followed by white space, and at every
        line break (one rule: a blank line is two line breaks); a sentence is the text between two
        cuts, without its surrounding white space. Kept when it has at least
        ``min_sentence_tokens`` tokens and shares no token with an arithmetic match.
    token ownership: a token belongs to the span in which its first non-space character lies (a
        token of white space only: its first character). A byte-level BPE token that carries a
        leading space (" Then") therefore belongs to the sentence whose first word it holds, and the
        white space between two sentences belongs to neither. No span holds a character of the next
        sentence: a token that would reach past the next sentence's first character (possible only
        with tokens that hold white space between two words) is left out of both.
    length: a span longer than ``max_span_tokens`` tokens is dropped, never cut (see below).
    budget: at most ``max_spans`` spans, arithmetic first, then sentences, each in order of
        appearance; the returned spans are sorted and disjoint.

Why an overlong sentence is dropped rather than cut at word boundaries: a counterfactual span is a
unit of meaning whose removal is measured. Masking a piece of a sentence leaves the rest of it in
view, so each piece's D measures how well the other pieces stand in for it rather than what the
sentence contributes; the pieces of one sentence would also take several places of the
``max_spans`` budget from other sentences. The authors' code drops such sentences too, so
importances stay comparable with theirs. Its tokens keep weight 1, like any token outside a span.
An arithmetic match longer than ``max_span_tokens`` is dropped for the same reason (a cut would
split a calculation).

Token ranges are half-open ``[start, end)`` over response positions. Offsets come from the
tokenizer itself (re-encoding the decoded text, or prefix decoding when that does not reproduce
the ids), so byte-level BPE tokens that hold part of a number, part of a multi-byte character or a
leading space map correctly.
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
    "token_anchors",
    "find_answer_start",
    "find_spans",
]

_SP = r"[^\S\n]*"  # white space within a line
_NUM = r"-?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)"  # no trailing "." : a full stop is not part of a number
_FRAC = rf"\\[dt]?frac\{{{_SP}{_NUM}{_SP}\}}\{{{_SP}{_NUM}{_SP}\}}"
_ATOM = rf"\(*(?:\$?{_NUM}%?|{_FRAC})\)*"
_OP = rf"{_SP}(?:[-+*/×÷·x]|\\times|\\cdot|\\div){_SP}"
_LHS = rf"(?:{_ATOM}(?:{_OP}{_ATOM})+|\(*{_FRAC}\)*(?:{_OP}{_ATOM})*)"
ARITHMETIC = re.compile(rf"{_LHS}(?:{_SP}={_SP}{_ATOM}(?:{_OP}{_ATOM})*)+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|(?<![\\\w])[^\W\d_{_CJK}]{{2,}}")
_HEADER_AFTER = re.compile(r"[#*_ \t]*[^\W\d_]{2}")
_GAP_END = re.compile(r"[.!?](?:\s|$)")
_GAP_MAX_WORDS = 3


@dataclass
class SpanParams:
    """Span and answer detection options.

    Attributes:
        answer_markers: case-insensitive strings that introduce the final answer. Default
            ["final answer", "####"].
        boxed_marker: a case-sensitive marker too. Default ``\\boxed{``.
        answer_max_words: most words that may follow the marker where the answer starts (see the
            module docstring). Default 16.
        max_spans: most spans per response. Default 10.
        max_span_tokens: longest span in tokens; longer sentences and calculations are dropped.
            Default 50.
        min_sentence_tokens: shortest sentence span in tokens. Default 5.
    """

    answer_markers: list[str] = field(default_factory=lambda: ["final answer", "####"])
    boxed_marker: str = "\\boxed{"
    answer_max_words: int = 16
    max_spans: int = 10
    max_span_tokens: int = 50
    min_sentence_tokens: int = 5

    def __post_init__(self):
        for name in ("max_spans", "max_span_tokens", "min_sentence_tokens"):
            value = getattr(self, name)
            if not (is_int(value) and value >= 1):
                raise ValueError(f"credit.counterfactual.{name} must be an integer >= 1, got {value!r}")
        if not (is_int(self.answer_max_words) and self.answer_max_words >= 0):
            raise ValueError(
                f"credit.counterfactual.answer_max_words must be an integer >= 0, got {self.answer_max_words!r}"
            )
        if isinstance(self.answer_markers, str) or not all(isinstance(m, str) and m for m in self.answer_markers):
            raise ValueError(
                f"credit.counterfactual.answer_markers must be a list of non-empty strings, got {self.answer_markers!r}"
            )
        if not (isinstance(self.boxed_marker, str) and self.boxed_marker):
            raise ValueError(
                f"credit.counterfactual.boxed_marker must be a non-empty string, got {self.boxed_marker!r}"
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

    Shapes: ids (T,) -> starts (T,), ends (T,) int64; both non-decreasing. Tokens that hold part of
    one multi-byte character share that character's range.
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


def token_anchors(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """anchor[k] = the first non-space character of token k in [starts[k], ends[k]), else starts[k].

    A token belongs to the span whose character range holds its anchor. Shapes: starts, ends (T,)
    -> (T,) int64, non-decreasing.
    """
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    if starts.shape != ends.shape or starts.ndim != 1:
        raise ValueError(f"starts and ends must be 1-D of one length, got {starts.shape} and {ends.shape}")
    if starts.size == 0:
        return starts.copy()
    n = len(text)
    nonspace = np.fromiter((not c.isspace() for c in text), dtype=bool, count=n)
    position = np.where(nonspace, np.arange(n, dtype=np.int64), n)
    next_nonspace = np.append(np.minimum.accumulate(position[::-1])[::-1], n)  # (n + 1,)
    first = next_nonspace[np.clip(starts, 0, n)]
    return np.maximum.accumulate(np.where(first < ends, first, starts))


def _marker_hits(text: str, params: SpanParams) -> list[tuple[int, int]]:
    """(start, end) of every marker occurrence in ``text`` (markdown headers left out), sorted."""
    hits = []
    for marker in params.answer_markers:
        hashes_only = set(marker) == {"#"}
        for m in re.finditer(re.escape(marker), text, flags=re.IGNORECASE):
            if hashes_only and _HEADER_AFTER.match(text, m.end()):
                continue
            hits.append((m.start(), m.end()))
    hits += [(m.start(), m.end()) for m in re.finditer(re.escape(params.boxed_marker), text)]
    return sorted(set(hits))


def _word_count(text: str, stop: int) -> int:
    """Words in ``text``, counting stops once ``stop`` is passed (returns stop + 1 then)."""
    count = 0
    for _ in _WORD.finditer(text):
        count += 1
        if count > stop:
            break
    return count


def find_answer_start(text: str, params: SpanParams) -> int | None:
    """Character index where the final answer starts, or None when the response has none.

    The last marker occurrence followed by answer material only (at most ``answer_max_words``
    words, at least one letter or digit), moved back over earlier markers of the same answer
    statement; rules in the module docstring.
    """
    hits = _marker_hits(text, params)
    chosen = None
    for k in range(len(hits) - 1, -1, -1):
        tail = text[hits[k][1] :]
        words = _word_count(tail, params.answer_max_words)
        if words > params.answer_max_words:
            break  # an earlier occurrence is followed by at least these words
        if any(c.isalnum() for c in tail):
            chosen = k
            break
    if chosen is None:
        return None
    while chosen > 0:
        gap = text[hits[chosen - 1][1] : hits[chosen][0]]
        connective = (
            not any(c.isdigit() for c in gap)
            and not _GAP_END.search(gap)
            and _word_count(gap, _GAP_MAX_WORDS) <= _GAP_MAX_WORDS
        )
        if not connective:
            break
        chosen -= 1
    return hits[chosen][0]


def _arithmetic_ranges(text: str, limit: int) -> list[tuple[int, int]]:
    """Character ranges of the calculations in text[:limit], trimmed to their own characters."""
    out = []
    for m in ARITHMETIC.finditer(text, 0, limit):
        c0, c1 = m.start(), m.end()
        while text[c1 - 1] == ")" and text.count(")", c0, c1) > text.count("(", c0, c1):
            c1 -= 1
        while text[c0] == "(" and text.count("(", c0, c1) > text.count(")", c0, c1):
            c0 += 1
        if text[c0] == "$" and text[c1 : c1 + 1] == "$":  # inline math $4 + 5 = 9$, not a price
            c0 += 1
        out.append((c0, c1))
    return out


def _sentence_ranges(text: str, limit: int) -> list[tuple[int, int]]:
    """Character ranges of the sentences of text[:limit], without their surrounding white space."""
    bounds = [0]
    for m in _SENTENCE_END.finditer(text, 0, limit):
        bounds += [m.start(), m.end()]
    bounds.append(limit)
    out = []
    for c0, c1 in zip(bounds[::2], bounds[1::2], strict=True):
        piece = text[c0:c1]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            out.append((c0 + lead, c0 + lead + len(stripped)))
    return out


def _spans_of_one(tokenizer, ids: Sequence[int], params: SpanParams, special: set[int]) -> ResponseSpans:
    text, starts, ends = token_char_offsets(tokenizer, ids)
    T = len(ids)
    valid_end = T
    while valid_end > 0 and int(ids[valid_end - 1]) in special:
        valid_end -= 1
    text_end = int(starts[valid_end]) if valid_end < T else len(text)  # trailing special tokens' text excluded
    answer_char = find_answer_start(text[:text_end], params)
    answer, reasoning_end, limit = None, valid_end, text_end
    if answer_char is not None:
        a0 = int(np.searchsorted(ends, answer_char, side="right"))  # the token holding the answer's first character
        if a0 < valid_end:
            answer, reasoning_end, limit = (a0, valid_end), a0, answer_char
    anchors = token_anchors(text, starts, ends)

    arith = np.asarray(_arithmetic_ranges(text, limit), dtype=np.int64).reshape(-1, 2)
    a_t0 = np.searchsorted(anchors, arith[:, 0], side="left")
    a_t1 = np.minimum(np.searchsorted(anchors, arith[:, 1], side="left"), reasoning_end)
    cover = np.zeros(T + 1, dtype=np.int64)  # +1 where a calculation starts, -1 where it ends
    keep = a_t1 > a_t0
    np.add.at(cover, a_t0[keep], 1)
    np.add.at(cover, a_t1[keep], -1)
    taken = np.concatenate([[0], np.cumsum(np.cumsum(cover)[:T] > 0)])  # tokens of any calculation before t
    keep &= (a_t1 - a_t0) <= params.max_span_tokens
    arith_spans = list(zip(a_t0[keep].tolist(), a_t1[keep].tolist(), strict=True))

    sent = np.asarray(_sentence_ranges(text, limit), dtype=np.int64).reshape(-1, 2)
    s_t0 = np.searchsorted(anchors, sent[:, 0], side="left")
    s_t1 = np.minimum(np.searchsorted(anchors, sent[:, 1], side="left"), reasoning_end)
    next_start = np.append(sent[1:, 0], limit)
    straddles = (s_t1 > s_t0) & (ends[np.maximum(s_t1 - 1, 0)] > next_start)
    s_t1 = s_t1 - straddles
    n_tok = s_t1 - s_t0
    overlaps = taken[s_t1] > taken[s_t0]  # shares a token with a calculation (kept or too long)
    keep_s = (n_tok >= params.min_sentence_tokens) & (n_tok <= params.max_span_tokens) & ~overlaps
    sentence_spans = list(zip(s_t0[keep_s].tolist(), s_t1[keep_s].tolist(), strict=True))

    chosen = (arith_spans + sentence_spans)[: params.max_spans]
    kinds = (["arithmetic"] * len(arith_spans) + ["sentence"] * len(sentence_spans))[: params.max_spans]
    order = sorted(range(len(chosen)), key=lambda k: chosen[k][0])
    return ResponseSpans(
        answer=answer,
        spans=[chosen[k] for k in order],
        kinds=[kinds[k] for k in order],
        text=text,
        length=valid_end,
    )


def find_spans(tokenizer, ids_list: Sequence[Sequence[int]], params: SpanParams | None = None) -> list[ResponseSpans]:
    """Answer and reasoning spans of each response (valid token ids only, no padding).

    Shapes: ids_list: B sequences of token ids -> B ResponseSpans.
    """
    params = params or SpanParams()
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    return [_spans_of_one(tokenizer, ids, params, special) for ids in ids_list]
