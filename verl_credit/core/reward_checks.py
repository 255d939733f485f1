"""Run-time checks of the rewards verl hands to verl_credit (issue 22): no verl imports.

    bad_reward_rows(scores) -> LongTensor[K]                rows whose reward is not a finite number
    check_rewards(scores, uids, where, prompt_of)           ValueError naming the first bad rollout
    count_dropped(uids, expected_groups, n) -> DroppedCount rollouts verl lost before the trainer
    check_dropped(count, max_fraction, reason)              ValueError when too many were lost

Why: verl's reward loop writes whatever the reward function returns into ``rm_scores``; a NaN
reward makes every advantage of its group NaN and the update trains on it. A reward function
that raises (or returns a string) makes verl's agent loop drop that rollout: its group arrives
with fewer than ``rollout.n`` rows and verl's ``_balance_batch`` pads the batch with synthetic
rows (uid ``pad...``) in its place, so the run goes on with shrunken groups.

Notation: B rollouts in the batch (padding rows excluded by the caller), T response tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "bad_reward_rows",
    "bad_reward_rows_loop",
    "reward_error",
    "check_rewards",
    "DroppedCount",
    "count_dropped",
    "check_dropped",
    "PROMPT_CHARS",
]

PROMPT_CHARS = 60  # characters of the prompt shown in an error


def bad_reward_rows(scores: torch.Tensor) -> torch.Tensor:
    """Rows of ``scores`` holding a value that is not a finite number.

    ``scores``: Tensor[B, T] token-level rewards (verl's ``rm_scores``, padded with 0) or Tensor[B]
    outcome rewards. A row is bad when any entry is NaN or +-inf: bad_b = not all_t isfinite(s_bt).
    Returns LongTensor[K] of row indices, ascending. A non-numeric dtype (bool) is a TypeError.
    """
    if scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(f"rewards must be a real number tensor, got dtype {scores.dtype}")
    if not scores.is_floating_point():
        return torch.zeros(0, dtype=torch.long)  # integers are always finite
    flat = scores.reshape(scores.shape[0], -1) if scores.dim() > 0 else scores.reshape(1, 1)
    return torch.nonzero(~torch.isfinite(flat).all(dim=1)).flatten()


def bad_reward_rows_loop(scores: torch.Tensor) -> list[int]:
    """Reference for :func:`bad_reward_rows`: one row at a time, one value at a time."""
    out = []
    for b in range(scores.shape[0]):
        row = scores[b].reshape(-1).tolist()
        if any(v != v or v in (float("inf"), float("-inf")) for v in row):
            out.append(b)
    return out


def _first_bad_value(row: torch.Tensor) -> float:
    flat = row.reshape(-1)
    bad = flat[~torch.isfinite(flat)]
    return float(bad[0]) if bad.numel() else float("nan")


def reward_error(where: str, index: int, total: int, uid: str, prompt: str | None, value, n_bad: int) -> str:
    """The one-line message for a bad reward (``index`` of ``total`` rollouts, ``n_bad`` bad in all)."""
    shown = "unknown" if prompt is None else repr(_clip(prompt))
    more = f"; {n_bad} of {total} rollouts in this batch have one" if n_bad > 1 else ""
    return (
        f"{where}: rollout {index} of {total} (uid {uid}, prompt {shown}) has reward {value!r}, not a finite "
        f"number{more}. Fix the reward function (reward.custom_reward_function) or reward model so that it "
        "returns a finite float for every response; verl_credit stops rather than train on it"
    )


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= PROMPT_CHARS else text[: PROMPT_CHARS - 3] + "..."


def check_rewards(
    scores: torch.Tensor,
    uids: Sequence[str],
    where: str,
    prompt_of: Callable[[int], str | None] | None = None,
) -> None:
    """ValueError (one line, see :func:`reward_error`) when a row of ``scores`` is not finite.

    ``scores``: Tensor[B, T] or Tensor[B]; ``uids``: B group ids; ``prompt_of(b)`` gives the prompt
    text of row b (called only for the row named), None when it cannot be had.
    """
    if len(uids) != scores.shape[0]:
        raise ValueError(f"{where}: {scores.shape[0]} rewards for {len(uids)} uids")
    bad = bad_reward_rows(scores)
    if bad.numel() == 0:
        return
    b = int(bad[0])
    prompt = prompt_of(b) if prompt_of is not None else None
    raise ValueError(reward_error(where, b, scores.shape[0], uids[b], prompt, _first_bad_value(scores[b]), len(bad)))


@dataclass
class DroppedCount:
    """Rollouts verl lost before the trainer saw them.

    Attributes:
        expected: ``expected_groups * n``, the rollouts the step asked for.
        received: rollouts that arrived (padding rows excluded).
        dropped: ``max(expected - received, 0)``.
        short_groups: uids of groups that arrived with fewer than n rollouts (a group lost whole
            has no uid left in the batch).
    """

    expected: int
    received: int
    dropped: int
    short_groups: list[str]

    @property
    def fraction(self) -> float:
        return self.dropped / self.expected if self.expected else 0.0

    def metrics(self) -> dict[str, float]:
        return {"rollouts_dropped/count": float(self.dropped), "rollouts_dropped/fraction": self.fraction}


def count_dropped(uids: Sequence[str], expected_groups: int, n: int) -> DroppedCount:
    """Compare the rollouts received (``uids``: one per real row, padding excluded) with
    ``expected_groups`` groups of ``n``: dropped = max(G n - B, 0)."""
    sizes = Counter(uids)
    short = [uid for uid, size in sizes.items() if size < n]
    expected = expected_groups * n
    return DroppedCount(expected, len(uids), max(expected - len(uids), 0), short)


def check_dropped(count: DroppedCount, max_fraction: float, reason: str | None = None) -> None:
    """ValueError when ``count.fraction > max_fraction``; ``reason`` is what is known of the cause
    (the reward function's error, or where to find it)."""
    if count.fraction <= max_fraction:
        return
    groups = ", ".join(count.short_groups[:3]) + (" ..." if len(count.short_groups) > 3 else "")
    where = f" (groups with fewer than n rollouts: {groups})" if groups else " (whole groups)"
    cause = f" Cause: {reason}." if reason else ""
    raise ValueError(
        f"verl dropped {count.dropped} of {count.expected} rollouts of this step before the advantage step{where}; "
        f"more than credit.max_dropped_fraction={max_fraction:g}. verl's agent loop drops a rollout when "
        f"the reward function raises or returns something that is not a number.{cause} Fix the reward "
        "function, or raise credit.max_dropped_fraction to train on the rollouts that remain"
    )
