"""Which rollouts the counterfactual stage measured, and why the others were not: read off the span
detection (``verl_credit.spans``) that the stage itself ran, not guessed from the text.

    rollout_coverage(tokenizer, ids, spans, params, finished, asked, gold, max_new_tokens) -> Coverage
    rollout_coverages(tokenizer, rollouts, spans, params, asked_rows, gold, max_new_tokens) -> [Coverage]
    summarize(coverages) -> {status or reason: count}
    reason_rows(coverages, names) -> [[status, reason, count, rollouts]]   the report's table

Statuses: ``"spans measured"`` (the answer and at least one reasoning span were scored: D exists),
``"answer only"`` (an answer was scored but no span precedes it: only the answer tokens are weighted)
and ``"not scored"`` (weight 1 everywhere). A status other than the first comes with its reason.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from verl_credit.spans import ResponseSpans, SpanParams, find_answer_start, token_char_offsets

__all__ = [
    "Coverage",
    "rollout_coverage",
    "rollout_coverages",
    "summarize",
    "reason_rows",
    "MEASURED",
    "ANSWER_ONLY",
    "NOT_SCORED",
]

MEASURED, ANSWER_ONLY, NOT_SCORED = "spans measured", "answer only", "not scored"


@dataclass
class Coverage:
    """status: MEASURED, ANSWER_ONLY or NOT_SCORED; reason: why not MEASURED ("" when it is);
    truncated: the rollout hit the token limit without eos (noted even when it was measured)."""

    status: str
    reason: str
    truncated: bool
    spans: int

    @property
    def measured(self) -> bool:
        return self.status == MEASURED


def _no_answer_reason(tokenizer, ids, sp: ResponseSpans, params: SpanParams) -> str:
    """Why ``find_spans`` found no answer: the detection the stage ran, repeated on the same text
    (trailing special tokens excluded) with no word limit, tells a marker followed by too many words
    from no marker at all."""
    text, starts, _ = token_char_offsets(tokenizer, ids)
    end = int(starts[sp.length]) if sp.length < len(ids) else len(text)
    if find_answer_start(text[:end], params) is not None:
        return "its answer marker ends the response (no answer tokens after it)"
    if find_answer_start(text[:end], dataclasses.replace(params, answer_max_words=10**9)) is not None:
        return f"its last answer marker is followed by more than {params.answer_max_words} words (answer_max_words)"
    return "no answer marker"


def rollout_coverage(
    tokenizer,
    ids: list[int],
    sp: ResponseSpans,
    params: SpanParams,
    finished: bool,
    asked: bool,
    gold: bool,
    max_new_tokens: int | None,
) -> Coverage:
    """The counterfactual status of one rollout.

    ``sp``: the stage's ``find_spans`` result for ``ids``; ``asked``: the rollout was among the
    rows the stage scores (``--score-rows trained`` skips groups with zero outcome advantage);
    ``gold``: ``answer_source=gold`` (the reference answer is teacher-forced, so no marker is needed).
    """
    truncated = not finished
    cut = f"cut at the token limit ({max_new_tokens} new tokens, no eos)" if max_new_tokens else "cut (no eos)"
    n = len(sp.spans)
    if not asked:
        return Coverage(NOT_SCORED, "not asked: its group's outcome advantages are all zero (score rows: trained)",
                        truncated, n)  # fmt: skip
    if sp.answer is None and not gold:
        why = _no_answer_reason(tokenizer, ids, sp, params)
        return Coverage(NOT_SCORED, f"{cut}: {why}" if truncated else why, truncated, n)
    if n == 0:
        why = (
            "no reasoning span before the answer (no calculation, no sentence of "
            f"{params.min_sentence_tokens} to {params.max_span_tokens} tokens)"
        )
        return Coverage(ANSWER_ONLY, why, truncated, n)
    return Coverage(MEASURED, "", truncated, n)


def rollout_coverages(tokenizer, rollouts, spans, params, asked_rows: set[int], gold: bool, max_new_tokens):
    """:func:`rollout_coverage` of every rollout (``rollouts``: explain's Rollouts; ``spans``: find_spans)."""
    return [
        rollout_coverage(tokenizer, r.tolist(), sp, params, done, i in asked_rows, gold, max_new_tokens)  # fmt: skip
        for i, (r, sp, done) in enumerate(zip(rollouts.responses, spans, rollouts.finished, strict=True))
    ]


def reason_rows(coverages: list[Coverage], names: list[str]) -> list[list]:
    """One row per (status, reason): its count and the rollouts (``names``; cut ones marked), measured
    first, then answer-only, then not scored, each by count."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, c in zip(names, coverages, strict=True):
        groups.setdefault((c.status, c.reason or "-"), []).append(name + (" (cut)" if c.truncated else ""))
    order = {MEASURED: 0, ANSWER_ONLY: 1, NOT_SCORED: 2}
    ranked = sorted(groups.items(), key=lambda kv: (order[kv[0][0]], -len(kv[1])))
    return [[status, reason, len(ids), ", ".join(ids)] for (status, reason), ids in ranked]


def summarize(coverages: list[Coverage]) -> dict[str, int]:
    """Count per status, then per reason of the rollouts not measured (most frequent first)."""
    out = dict(Counter(c.status for c in coverages))
    for reason, count in Counter(c.reason for c in coverages if c.reason).most_common():
        out[reason] = count
    return out
