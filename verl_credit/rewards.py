"""Math answer grading with math-verify, and the reward function the recipes give verl.

    grade(solution, ground_truth) -> bool
        True when the answer math-verify extracts from ``solution`` (a ``\\boxed{}`` expression,
        else the last number or expression) equals ``ground_truth`` symbolically.
    compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict
        verl's custom reward function signature: ``{"score": 1.0 | 0.0, "acc": bool}``. ``acc``
        is what DAPO's dynamic sampling filters on (``algorithm.filter_groups.metric=acc``).

Use it in a run with ``reward.custom_reward_function.path=pkg://verl_credit.rewards`` (the recipes
do): the ``pkg://`` path resolves on every Ray node that has verl_credit installed.

math-verify bounds its parsing time with ``signal.alarm``, which only works in the main thread;
verl calls reward functions from worker threads, where the timeouts are therefore switched off.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["grade", "compute_score"]


def grade(solution: str, ground_truth: str, timeout_s: int = 5) -> bool:
    """Does the final answer of ``solution`` equal ``ground_truth``? (math-verify, symbolic)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if not solution or ground_truth is None or not str(ground_truth).strip():
        return False
    timeout = timeout_s if threading.current_thread() is threading.main_thread() else None
    gold = parse("\\boxed{" + str(ground_truth) + "}", [LatexExtractionConfig()], parsing_timeout=timeout)
    answer = parse(solution, [ExprExtractionConfig(), LatexExtractionConfig()], parsing_timeout=timeout)
    if not gold or not answer:
        return False
    return bool(verify(gold, answer, timeout_seconds=timeout))


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None, **kwargs: Any
) -> dict[str, Any]:
    """verl's ``custom_reward_function`` entry point: 1.0 for a correct final answer, else 0.0."""
    correct = grade(solution_str, ground_truth)
    return {"score": 1.0 if correct else 0.0, "acc": correct}
