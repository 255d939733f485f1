"""The reward of ``verl-credit smoke``: a test signal that mixes outcomes, not a task.

    compute_score(data_source, solution_str, ground_truth, ...) -> {"score": 1.0 | 0.0, "acc": bool}

A random tiny model cannot solve anything, so a correctness reward would give all-wrong groups and
no credit signal. This one is 1.0 when the decoded response has an even number of characters:
about half the rollouts of a group, so most groups are mixed and every estimator has something
to assign. Deterministic in the text, so a test can recompute it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compute_score", "compute_score_uneven"]


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None, **kwargs: Any):
    even = len(solution_str) % 2 == 0
    return {"score": 1.0 if even else 0.0, "acc": even}


def compute_score_uneven(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None, **kwargs: Any):
    """Problems with an odd answer are always "correct" (all-correct groups, which the scoring stage
    skips); the others get :func:`compute_score`. Makes the stage's work differ across dp ranks."""
    if int(str(ground_truth).strip() or 0) % 2 == 1:
        return {"score": 1.0, "acc": True}
    return compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
