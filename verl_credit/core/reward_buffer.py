"""Reward-balanced buffer policy (``credit.batching.reward_balanced``, METHODS.md section 5): no verl imports.

    select_balanced_groups(...)               -- choose B groups with rho <= positive share <= 1 - rho.
    RewardBalancedPool                        -- the buffer's state and policy (waiting groups, ages,
                                                 drop reasons, counters); no TransferQueue.
    fill_batch(pool, step, B, generate, drop) -- the decide/generate loop of one training step.

Options: :class:`verl_credit.core.batching.RewardBalancedConfig`. The verl side (a ``ReplayBuffer``
subclass loaded through verl's custom sampler hook) is ``verl_credit.integration.buffer``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from verl_credit.core.batching import RewardBalancedConfig

__all__ = ["select_balanced_groups", "GroupRecord", "PoolDecision", "RewardBalancedPool", "fill_batch", "DROP_REASONS"]


def select_balanced_groups(
    positives: Sequence[int], sizes: Sequence[int], ages: Sequence[int], batch_size: int, rho: float
) -> tuple[np.ndarray, float, bool]:
    """Choose ``batch_size`` groups whose positive share p = sum(pos) / sum(size) obeys rho <= p <= 1 - rho.

    Start from the oldest ``batch_size`` groups (ties: input order). While p < rho, swap the selected
    group with the lowest positive fraction (ties: the youngest) for the oldest unselected group
    that raises p without pushing it above 1 - rho (if every such swap overshoots, the one landing
    inside the window, else stop); symmetrically while p > 1 - rho. p moves monotonically, so this
    ends after at most one swap per rollout.

    Complete for groups of equal size n when the window of allowed positive counts is at least n
    wide, floor((1 - rho) S) - ceil(rho S) >= n - 1 with S = batch_size * n (e.g. rho = 0.25 and
    batch_size >= 2): if any batch_size-subset is balanced, one is found (each swap moves the
    positive count by at most n, so it cannot jump over the window, and the chain only stops at
    the extreme subset). Otherwise the result is the closest it reached.

    Shape: (G,) counts and ages -> (batch_size,) selected group indices, the share p, balanced flag.
    """
    pos = np.asarray(positives, dtype=np.int64)
    size = np.asarray(sizes, dtype=np.int64)
    age = np.asarray(ages, dtype=np.int64)
    G = len(pos)
    if not (len(size) == len(age) == G):
        raise ValueError("positives, sizes and ages need one entry per group")
    if not 0 < batch_size <= G:
        raise ValueError(f"cannot select {batch_size} of {G} groups")
    if (size <= 0).any() or (pos < 0).any() or (pos > size).any():
        raise ValueError("every group needs size >= 1 and 0 <= positives <= size")
    preference = np.lexsort((np.arange(G), -age))  # oldest first, then input order
    rank = np.empty(G, dtype=np.int64)
    rank[preference] = np.arange(G)  # 0 = most preferred
    selected = np.zeros(G, dtype=bool)
    selected[preference[:batch_size]] = True
    P, S = int(pos[selected].sum()), int(size[selected].sum())
    frac = pos / size
    eps = 1e-9

    def balanced(P, S):
        return P >= rho * S - eps and S - P >= rho * S - eps

    while not balanced(P, S):
        need_more = P < rho * S - eps  # too few positives
        sel_idx = np.flatnonzero(selected)
        # the selected group that hurts most: lowest (highest) positive fraction, youngest on ties
        key = frac[sel_idx] if need_more else -frac[sel_idx]
        worst = sel_idx[np.lexsort((-rank[sel_idx], key))[0]]
        cand = np.flatnonzero(~selected)
        newP, newS = P - pos[worst] + pos[cand], S - size[worst] + size[cand]
        share, cur = newP / newS, P / S
        improves = share > cur + eps if need_more else share < cur - eps
        inside = (newP >= rho * newS - eps) & (newS - newP >= rho * newS - eps)
        no_overshoot = (newS - newP >= rho * newS - eps) if need_more else (newP >= rho * newS - eps)
        ok = improves & no_overshoot
        if not ok.any():
            ok = improves & inside
            if not ok.any():
                break
        best = cand[ok][np.argmin(rank[cand[ok]])]  # oldest acceptable candidate
        selected[worst], selected[best] = False, True
        P, S = int(newP[cand == best][0]), int(newS[cand == best][0])
    chosen = np.flatnonzero(selected)
    chosen = chosen[np.argsort(rank[chosen], kind="stable")]
    return chosen, P / S, bool(balanced(P, S))


DROP_REASONS = ("age", "capacity", "empty")


@dataclass
class GroupRecord:
    """A finished group waiting in the buffer: ``size`` rollouts, ``positives`` of them positive,
    prompt submitted at training step ``step``."""

    uid: str
    size: int
    positives: int
    step: int


@dataclass
class PoolDecision:
    """What :meth:`RewardBalancedPool.decide` wants done.

    Attributes:
        release: uids of the update batch (oldest first), or None when more groups are needed.
        generate: prompts to generate before deciding again (0 when releasing).
        reason: "balanced", "forced" (no balanced batch within the wait bound: best one released),
            "shortfall" (fewer waiting groups than one batch) or "unbalanced" (asking for more).
        drop: {uid: reason} dropped in this call; the caller removes them from storage.
        positive_share: positive share of the released batch (NaN when not releasing).
    """

    release: list[str] | None
    generate: int
    reason: str
    drop: dict[str, str]
    positive_share: float = float("nan")


class RewardBalancedPool:
    """State and policy of the reward-balanced buffer (no storage: the caller moves the rows).

    Every group added is, at any time, exactly one of: waiting, released (trained on) or dropped
    with a reason in :data:`DROP_REASONS` ("age": older than ``max_age``; "capacity": beyond the
    bound; "empty": a group with no rollout). Counters of all of them are kept in groups and in
    rollouts, so ``generated == released + waiting + dropped`` always holds.

    Bounds: at a decision the pool holds at most ``capacity_batches * batch_size`` groups; after a
    release it keeps at most ``(capacity_batches - 1) * batch_size`` (room for the next step's
    prompts). One step asks for at most ``max_refills`` extra batches for balance.
    """

    def __init__(self, rho: float = 0.25, max_age: int = 2, max_refills: int = 2, capacity_batches: int = 4):
        RewardBalancedConfig(rho=rho, max_age=max_age, max_refills=max_refills, capacity_batches=capacity_batches)
        self.rho, self.max_age = rho, max_age
        self.max_refills, self.capacity_batches = max_refills, capacity_batches
        self.waiting: dict[str, GroupRecord] = {}  # insertion order = arrival order
        self.seen: set[str] = set()
        self.generated = Counter()  # "groups", "rollouts"
        self.released = Counter()
        self.dropped: dict[str, Counter] = {reason: Counter() for reason in DROP_REASONS}
        self.forced_releases = 0
        self.last_release: dict[str, float] = {}

    # -- state
    def add(self, record: GroupRecord) -> dict[str, str]:
        """A newly finished group. A group with no rollout is dropped at once: returns {uid: "empty"}
        (the caller removes it from storage), else {}."""
        if record.uid in self.seen:
            raise ValueError(f"group {record.uid!r} was already added to the buffer")
        if not (0 <= record.positives <= record.size):
            raise ValueError(f"group {record.uid!r}: positives {record.positives} not in [0, {record.size}]")
        self.seen.add(record.uid)
        self.generated.update(groups=1, rollouts=record.size)
        self.waiting[record.uid] = record
        if record.size == 0:
            self._drop(record.uid, "empty")
            return {record.uid: "empty"}
        return {}

    def _drop(self, uid: str, reason: str) -> None:
        record = self.waiting.pop(uid)
        self.dropped[reason].update(groups=1, rollouts=record.size)

    def _expire(self, step: int) -> dict[str, str]:
        old = [uid for uid, r in self.waiting.items() if step - r.step > self.max_age]
        for uid in old:
            self._drop(uid, "age")
        return dict.fromkeys(old, "age")

    def _trim(self, keep: int) -> dict[str, str]:
        """Drop the oldest groups beyond ``keep`` (reason "capacity")."""
        excess = len(self.waiting) - keep
        if excess <= 0:
            return {}
        oldest = sorted(self.waiting.values(), key=lambda r: r.step)[:excess]  # stable: arrival order
        for r in oldest:
            self._drop(r.uid, "capacity")
        return dict.fromkeys((r.uid for r in oldest), "capacity")

    # -- policy
    def decide(self, step: int, batch_size: int, refills_done: int = 0) -> PoolDecision:
        """Drop expired groups, then release a batch of ``batch_size`` groups or ask for more.

        Release when a balanced batch exists ("balanced"); else ask for ``batch_size`` more prompts
        if fewer than ``max_refills`` were asked this step and the pool has room ("unbalanced");
        else release the best batch ("forced"). With fewer than ``batch_size`` waiting groups it
        asks for the difference ("shortfall"; not counted as a refill).
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        capacity = self.capacity_batches * batch_size
        drop = self._expire(step)
        if len(self.waiting) < batch_size:
            return PoolDecision(None, batch_size - len(self.waiting), "shortfall", drop)
        records = list(self.waiting.values())
        chosen, share, ok = select_balanced_groups(
            [r.positives for r in records],
            [r.size for r in records],
            [step - r.step for r in records],
            batch_size,
            self.rho,
        )
        if not ok and refills_done < self.max_refills and len(records) + batch_size <= capacity:
            return PoolDecision(None, batch_size, "unbalanced", drop)
        release = [records[i].uid for i in chosen]
        self._release(release, step, share, forced=not ok)
        drop.update(self._trim(capacity - batch_size))
        return PoolDecision(release, 0, "balanced" if ok else "forced", drop, share)

    def _release(self, uids: list[str], step: int, share: float, forced: bool) -> None:
        records = [self.waiting.pop(uid) for uid in uids]
        rollouts = sum(r.size for r in records)
        self.released.update(groups=len(records), rollouts=rollouts)
        self.forced_releases += int(forced)
        ages = [step - r.step for r in records]
        self.last_release = {
            "released/groups": len(records),
            "released/rollouts": rollouts,
            "released_positive/share": share,
            "released_age/mean": sum(r.size * a for r, a in zip(records, ages, strict=True)) / max(rollouts, 1),
            "released_age/max": max(ages),
            "forced_release/count": int(forced),
        }

    def metrics(self) -> dict[str, float]:
        """Counters for ``credit/buffer/<name>``: this step's release and the running totals.

        Totals are cumulative over the run: they are saved in checkpoints (:meth:`state_dict`)."""
        waiting_rollouts = sum(r.size for r in self.waiting.values())
        out = {
            "waiting/groups": len(self.waiting),
            "waiting/rollouts": waiting_rollouts,
            "generated/rollouts_total": self.generated["rollouts"],
            "trained/rollouts_total": self.released["rollouts"],
            "forced_release/total": self.forced_releases,
        }
        for reason, counts in self.dropped.items():
            out[f"dropped_{reason}/rollouts_total"] = counts["rollouts"]
        gen = self.generated["rollouts"]
        out["utilisation/share"] = self.released["rollouts"] / gen if gen else 0.0
        out.update(self.last_release)
        return out

    # -- checkpoints
    def state_dict(self) -> dict:
        """The pool as plain JSON types: waiting groups (arrival order), running totals.

        ``seen`` is saved as the waiting uids only: released and dropped groups are gone from storage,
        so only a waiting group can be offered again (after a resume) and must not count twice."""
        return {
            "waiting": [dataclasses.asdict(r) for r in self.waiting.values()],
            "generated": dict(self.generated),
            "released": dict(self.released),
            "dropped": {reason: dict(c) for reason, c in self.dropped.items()},
            "forced_releases": self.forced_releases,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (ValueError naming the first missing or bad entry)."""
        try:
            waiting = [GroupRecord(**{k: r[k] for k in ("uid", "size", "positives", "step")}) for r in state["waiting"]]
            totals = {name: Counter(state[name]) for name in ("generated", "released")}
            dropped = {reason: Counter(state["dropped"].get(reason, {})) for reason in DROP_REASONS}
            forced = int(state["forced_releases"])
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"reward-balanced buffer state: missing or malformed entry {err}") from err
        self.waiting = {r.uid: r for r in waiting}
        self.seen = set(self.waiting)
        self.generated, self.released = totals["generated"], totals["released"]
        self.dropped, self.forced_releases = dropped, forced
        self.last_release = {}

    def accounted(self) -> tuple[int, int]:
        """(generated rollouts, released + waiting + dropped rollouts): equal at all times."""
        dropped = sum(c["rollouts"] for c in self.dropped.values())
        waiting = sum(r.size for r in self.waiting.values())
        return self.generated["rollouts"], self.released["rollouts"] + waiting + dropped


def fill_batch(
    pool: RewardBalancedPool,
    step: int,
    batch_size: int,
    generate: Callable[[int], None],
    on_drop: Callable[[dict[str, str]], None] = lambda drop: None,
    max_shortfall_rounds: int = 8,
) -> PoolDecision:
    """One training step's loop: decide, drop, generate more while asked, return the release.

    ``generate(prompts)`` must produce (at least) that many groups and :meth:`~RewardBalancedPool.add`
    them before returning; ``on_drop({uid: reason})`` removes dropped groups from storage. Ends
    after at most ``pool.max_refills`` balance refills plus ``max_shortfall_rounds`` shortfall rounds
    (RuntimeError if generation keeps producing no usable group).
    """
    refills = shortfalls = 0
    while True:
        decision = pool.decide(step, batch_size, refills)
        on_drop(decision.drop)
        if decision.release is not None:
            return decision
        if decision.reason == "shortfall":
            shortfalls += 1
            if shortfalls > max_shortfall_rounds:
                raise RuntimeError(
                    f"reward-balanced buffer: still {len(pool.waiting)} of {batch_size} groups after "
                    f"{max_shortfall_rounds} generation rounds; rollouts keep failing"
                )
        else:
            refills += 1
        generate(decision.generate)
