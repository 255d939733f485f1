"""lambda_dyn over training: the weight of r_sig in the incorrect-rollout reward (``credit.length_reward.schedule``).

Public API:
    DynamicLambdaSchedule   -- ``value_at(step)``, ``observe(step, score_sum, count)``, ``metrics()``,
                               ``state_dict``/``load_state_dict``; the rule is in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from verl_credit.core.length_reward.config import LengthRewardConfig
from verl_credit.core.length_reward.shaping import HALF_PI

__all__ = ["DynamicLambdaSchedule"]


class DynamicLambdaSchedule:
    """lambda_dyn, the weight of r_sig in the incorrect-rollout reward, over training (Bingo's rule).

    Score curve: y_s = mean raw outcome reward of the real rollouts of training step s (before
    shaping). The value used at step t depends only on steps < t (the authors update it after
    each step's advantage), so ``value_at(t)`` first closes step t-1.

        explore = lambda_we / (pi/2),  floor = -2 lambda_we / (pi/2)
        before activation:  lambda_dyn = explore   (longer significant reasoning costs less when wrong)
        after closing step s with s >= slope_start_step and at least 2 steps seen:
            k = min(slope_period, steps seen - 1);  m = least-squares slope of y over the last k steps
                (m = 0 when k = 1)
            first time (activation): m0 = m;  scale = explore / max(1e-6, |m0|)  (explore if m0 == 0)
            m' = m * scale                    (so the first slope maps to +-explore)
            m' <= slope_threshold:  flat_steps += 1;  lambda_dyn = max(floor, -penalty_step * flat_steps)
            otherwise:              flat_steps = 0;   lambda_dyn = m'
    With ``schedule="constant"`` lambda_dyn stays ``explore``. Several calls within one step (verl's
    ``parameter_sync_step`` > 1) accumulate into that step's score.

    State (``state_dict``/``load_state_dict``, JSON-serialisable): the value, m0, the scale,
    flat_steps, the last ``slope_period`` (step, score) points, the number of steps seen, the latest
    step and the open step's running sum/count, so a resumed run continues exactly as an
    uninterrupted one.
    """

    _STATE_KEYS = (
        "value",
        "initial_slope",
        "slope_scale",
        "flat_steps",
        "history",
        "steps_seen",
        "open_step",
        "latest_step",
        "open_sum",
        "open_count",
        "last_slope",
        "last_scaled_slope",
    )

    def __init__(self, config: LengthRewardConfig):
        self.config = config
        self.explore = config.lambda_we / HALF_PI
        self.floor = -2.0 * config.lambda_we / HALF_PI
        self.value = self.explore
        self.initial_slope: float | None = None
        self.slope_scale: float | None = None
        self.flat_steps = 0
        self.history: list[tuple[int, float]] = []
        self.steps_seen = 0
        self.open_step: int | None = None
        self.latest_step: int | None = None  # the highest step observed
        self.open_sum = 0.0
        self.open_count = 0
        self.last_slope: float | None = None
        self.last_scaled_slope: float | None = None

    @property
    def active(self) -> bool:
        """True once the first slope was measured (lambda_dyn follows the score curve)."""
        return self.initial_slope is not None

    def value_at(self, step: int) -> float:
        """lambda_dyn for training step ``step`` (closes the previous step first)."""
        if self.open_step is not None and step > self.open_step:
            self._close()
        return self.value

    def observe(self, step: int, score_sum: float, count: int) -> None:
        """Add ``count`` rollouts whose raw outcome rewards sum to ``score_sum`` to step ``step``."""
        if self.latest_step is not None and step < self.latest_step:
            raise ValueError(
                f"length reward schedule: step {step} observed after step {self.latest_step}; steps must not go back"
            )
        if not (math.isfinite(score_sum) and count >= 0):
            raise ValueError(f"length reward schedule: bad observation (sum {score_sum}, count {count})")
        if self.open_step is not None and step > self.open_step:
            self._close()
        self.open_step = self.latest_step = int(step)
        self.open_sum += float(score_sum)
        self.open_count += int(count)

    def _close(self) -> None:
        step, count = self.open_step, self.open_count
        mean = self.open_sum / count if count else None
        self.open_step, self.open_sum, self.open_count = None, 0.0, 0
        if mean is None:  # a step without real rollouts adds no point to the curve
            return
        self.history = (self.history + [(int(step), float(mean))])[-self.config.slope_period :]
        self.steps_seen += 1
        if self.config.schedule != "bingo" or step < self.config.slope_start_step or self.steps_seen < 2:
            return
        k = min(self.config.slope_period, self.steps_seen - 1)
        slope = _least_squares_slope(self.history[-k:])
        if self.initial_slope is None:
            self.initial_slope = slope
            self.slope_scale = self.explore if slope == 0 else self.explore / max(1e-6, abs(slope))
        scaled = slope * self.slope_scale
        if scaled <= self.config.slope_threshold:
            self.flat_steps += 1
            self.value = max(self.floor, -self.config.penalty_step * self.flat_steps)
        else:
            self.flat_steps = 0
            self.value = scaled
        self.last_slope, self.last_scaled_slope = slope, scaled

    def metrics(self) -> dict[str, float]:
        """``length_reward/...`` schedule metrics (the scaled slope once measured)."""
        out = {"length_reward/flat_steps/count": float(self.flat_steps)}
        if self.last_scaled_slope is not None:
            out["length_reward/score_slope/scaled"] = self.last_scaled_slope
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {key: getattr(self, key) for key in self._STATE_KEYS}
        state["history"] = [[s, y] for s, y in self.history]  # JSON has no tuples
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in self._STATE_KEYS if k not in state]
        unknown = sorted(set(state) - set(self._STATE_KEYS))
        if missing or unknown:
            raise ValueError(
                f"length reward schedule state: missing keys {missing}, unknown keys {unknown}; "
                f"expected {list(self._STATE_KEYS)}"
            )
        self.value = float(state["value"])
        self.initial_slope = None if state["initial_slope"] is None else float(state["initial_slope"])
        self.slope_scale = None if state["slope_scale"] is None else float(state["slope_scale"])
        self.flat_steps = int(state["flat_steps"])
        self.history = [(int(s), float(y)) for s, y in state["history"]][-self.config.slope_period :]
        self.steps_seen = int(state["steps_seen"])
        self.open_step = None if state["open_step"] is None else int(state["open_step"])
        self.latest_step = None if state["latest_step"] is None else int(state["latest_step"])
        self.open_sum = float(state["open_sum"])
        self.open_count = int(state["open_count"])
        self.last_slope = None if state["last_slope"] is None else float(state["last_slope"])
        self.last_scaled_slope = None if state["last_scaled_slope"] is None else float(state["last_scaled_slope"])


def _least_squares_slope(points: Sequence[tuple[int, float]]) -> float:
    """Slope of the least-squares line through (step, score) points; 0 for fewer than 2 distinct steps."""
    if len(points) < 2:
        return 0.0
    xs = [float(s) for s, _ in points]
    ys = [float(y) for _, y in points]
    xm, ym = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - xm) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True)) / sxx
