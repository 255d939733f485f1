"""How many rollouts the counterfactual stage could score, and a warning when it scored too few (issue 22).

    StageCoverage                          rows the stage was asked for / scored in one step
    coverage_reasons(tokenizer, ...)       why the unscored rows were not: verl_credit.explain.coverage's reasons
    warn_low_coverage(coverage, ...)       the once-per-run warning

A rollout the stage cannot score (no answer found: no marker, a marker followed by too many words,
the response cut at ``data.max_response_length``) keeps weight 1 under counterfactual weighting (its
advantages are the base estimator's) and counts as all insignificant for the length reward's
``counterfactual`` scorer. When fewer than :data:`LOW_SCORED_FRACTION` of the rollouts the stage was
asked for get a score in a step, the run logs one warning (once per run) with the reasons counted
on that step's rows, read off the same span detection the stage ran
(:func:`verl_credit.explain.coverage.rollout_coverage`). Every step logs
``credit/counterfactual/rollouts_requested/count`` (rows sent to the stage's forward),
``rollouts_scored/count`` (rows with a score: an answer was found; duplicates included) and
``rollouts_scored/fraction`` (scored / asked; absent when nothing was asked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from verl_credit.explain.coverage import MEASURED, rollout_coverage, summarize
from verl_credit.spans import SpanParams, find_spans

__all__ = ["LOW_SCORED_FRACTION", "StageCoverage", "coverage_reasons", "warn_low_coverage"]

logger = logging.getLogger(__name__)

LOW_SCORED_FRACTION = 0.25  # warn when a step scores fewer than this share of the rollouts asked for


@dataclass
class StageCoverage:
    """One step of the counterfactual stage. ``asked``: BoolTensor[B] rows the stage was asked to
    score (duplicates included: they copy their source's scores); ``scored``: BoolTensor[B] rows
    with a score; ``responses``: LongTensor[B, T]; ``response_mask``: Tensor[B, T]."""

    asked: torch.Tensor
    scored: torch.Tensor
    responses: torch.Tensor
    response_mask: torch.Tensor

    def metrics(self) -> dict[str, float]:
        asked, scored = int(self.asked.sum()), int((self.scored & self.asked).sum())
        out = {"counterfactual/rollouts_scored/count": float(scored)}
        if asked:
            out["counterfactual/rollouts_scored/fraction"] = scored / asked
        return out

    @property
    def low(self) -> bool:
        asked = int(self.asked.sum())
        return asked > 0 and int((self.scored & self.asked).sum()) < LOW_SCORED_FRACTION * asked


def coverage_reasons(
    tokenizer, coverage: StageCoverage, params: SpanParams, gold: bool, max_new_tokens: int | None
) -> dict[str, int]:
    """{status or reason: rollouts} over the asked rows that were not fully measured (no answer, or
    an answer with no reasoning span before it), with explain's wording."""
    rows = coverage.asked.nonzero().flatten().tolist()
    lengths = coverage.response_mask.sum(-1).long().tolist()
    ids = [coverage.responses[i, : lengths[i]].tolist() for i in rows]
    eos = getattr(tokenizer, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    found = find_spans(tokenizer, ids, params)
    reports = [
        rollout_coverage(
            tokenizer,
            r,
            sp,
            params,
            finished=bool(r) and (r[-1] in eos_ids or (max_new_tokens is not None and len(r) < max_new_tokens)),
            asked=True,
            gold=gold,
            max_new_tokens=max_new_tokens,
        )
        for r, sp in zip(ids, found, strict=True)
    ]
    return summarize([c for c in reports if c.status != MEASURED])


def warn_low_coverage(
    coverage: StageCoverage,
    step: int,
    tokenizer,
    params: SpanParams,
    gold: bool,
    max_new_tokens: int | None,
    consumers: str,
) -> str | None:
    """Log (and return) the warning when ``coverage.low``; None otherwise. The caller logs it once per run."""
    if not coverage.low:
        return None
    asked, scored = int(coverage.asked.sum()), int((coverage.scored & coverage.asked).sum())
    try:
        reasons = coverage_reasons(tokenizer, coverage, params, gold, max_new_tokens)
        why = "; ".join(f"{reason}: {count}" for reason, count in reasons.items()) or "unknown"
    except Exception as err:  # the reasons explain the warning; never fail the step over them
        why = f"(could not be worked out: {err})"
    message = (
        f"credit.counterfactual: step {step} scored {scored} of the {asked} rollouts the stage was asked for "
        f"(under {LOW_SCORED_FRACTION:.0%}); unscored rollouts {consumers}. Rollouts by reason: {why}. "
        "Check credit.counterfactual.answer_markers / answer_max_words against the responses, raise "
        "data.max_response_length, or use credit.counterfactual.answer_source=gold. Logged once per run; "
        "credit/counterfactual/rollouts_scored/fraction is logged every step"
    )
    logger.warning(message)
    return message
