"""Cancellation-preserving batching (METHODS.md section 5): pure logic, no verl imports.

Opposite-sign rollouts of one prompt cancel the updates of the tokens they share only when they
land in the same optimizer step. This module holds the three pieces of logic behind it:

Query-preserved mini-batches (``credit.batching.query_preserved``)
    group_rows(uids, is_padding)            -- (N,) -> G row lists + free (padding) rows.
    pack_groups(sizes, num_bins, capacity)  -- first-fit decreasing of whole groups into bins.
    required_padding(...)                   -- extra free rows needed so that whole groups fit.
    query_preserved_layout(...)             -- row order: whole groups per global mini-batch,
                                               lengths balanced across dp ranks inside each.
    worker_minibatches(...)                 -- the global mini-batches verl's V1 worker forms.
    split_groups(...)                       -- uids whose rows fall into more than one of them.
    minibatch_rank_loads(...)               -- (K, D) load per mini-batch and rank for an order.

Reward-balanced buffer (``credit.batching.reward_balanced``)
    select_balanced_groups(...)             -- choose B groups with rho <= positive share <= 1 - rho.
    RewardBalancedPool                      -- the buffer's state and policy (waiting groups, ages,
                                               drop reasons, counters); no TransferQueue.
    fill_batch(pool, step, B, generate, drop) -- the decide/generate loop of one training step.

Token flipping (``credit.diagnostics.token_flip_every``)
    token_flip_shares(old, new, adv, mask)  -- share of tokens whose log-prob moved against the
                                               sign of their rollout's advantage; loop reference
                                               ``token_flip_shares_loop`` beside it.

Configuration: :class:`BatchingConfig` (``credit.batching``), :class:`RewardBalancedConfig`
(``credit.batching.reward_balanced``) and :class:`DiagnosticsConfig` (``credit.diagnostics``).

Notation: N rows of a training batch (rollouts plus verl's padding rows), G groups (rows sharing
a uid), M rows per global PPO mini-batch (``actor.ppo_mini_batch_size * rollout.n``), D data-parallel
ranks, m = M / D rows per rank and mini-batch, K = N / M mini-batches, B rollouts (token tensors)
or groups per update batch (pool), T response positions.

How verl's V1 worker cuts a batch (verl 0.9.1, ``TrainingWorker.train_mini_batch``): the batch
is split into D contiguous chunks (``KVBatchMeta.chunk``), rank r gets chunk r, and cuts it into
consecutive mini-batches of m rows (``make_iterator``, shuffled only if ``actor.shuffle``), the
same for every epoch. Global mini-batch k is the union over ranks of every rank's k-th slice, so
the layout below is rank-major: rank 0's K slices, then rank 1's, ...
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "BatchingConfig",
    "RewardBalancedConfig",
    "DiagnosticsConfig",
    "QueryPreservedLayout",
    "group_rows",
    "pack_groups",
    "required_padding",
    "query_preserved_layout",
    "worker_minibatches",
    "split_groups",
    "minibatch_rank_loads",
    "relative_imbalance",
    "select_balanced_groups",
    "GroupRecord",
    "PoolDecision",
    "RewardBalancedPool",
    "fill_batch",
    "DROP_REASONS",
    "token_flip_shares",
    "token_flip_shares_loop",
]

BalanceFn = Callable[[list[float], int], list[list[int]]]


# ----------------------------------------------------------------------------- configuration


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class RewardBalancedConfig:
    """The ``credit.batching.reward_balanced`` block: a buffer that releases an update batch only
    when both outcome signs are well represented (arXiv 2605.08666, "reward-balanced batching").

    A rollout is positive when its outcome reward (sum of ``rm_scores``) is > ``positive_threshold``
    and negative otherwise. Ages are in training steps: a group generated (its prompt submitted) at
    step s has age t - s at step t; 0 is on-policy.

    Attributes:
        enabled: bool, default False. Load :class:`~verl_credit.integration.buffer.RewardBalancedReplayBuffer`
            through verl's custom sampler hook (the plugin trainer sets
            ``trainer.v1.sampler.custom_sampler`` itself). Works with every estimator.
        rho: float in (0, 0.5], default 0.25 (the paper leaves rho per model and unpublished).
            A batch is released when rho <= positive share <= 1 - rho (share over rollouts).
        max_age: int >= 0, default 2. Groups older than this many steps are dropped (reason "age")
            instead of trained on: bounds the policy lag of what the buffer holds back.
        positive_threshold: float or null, default null = ``credit.correct_threshold``.
        max_refills: int >= 0, default 2. When no balanced batch can be formed, the buffer asks for
            one more batch of prompts at most this many times per step, then releases the best batch
            it has (logged as ``credit/buffer/forced_release/count``): it never deadlocks, e.g. on a
            stream where every rollout is correct.
        capacity_batches: int >= 1, default 4. The buffer holds at most this many update batches of
            finished groups (waiting plus requested); the oldest groups beyond it are dropped
            (reason "capacity"). 1 leaves no room to hold anything back or to ask for more.
    """

    enabled: bool = False
    rho: float = 0.25
    max_age: int = 2
    positive_threshold: float | None = None
    max_refills: int = 2
    capacity_batches: int = 4

    def __post_init__(self):
        prefix = "credit.batching.reward_balanced"
        if not isinstance(self.enabled, bool):
            raise ValueError(f"{prefix}.enabled must be true or false, got {self.enabled!r}")
        if not (isinstance(self.rho, int | float) and not isinstance(self.rho, bool) and 0 < self.rho <= 0.5):
            raise ValueError(f"{prefix}.rho must lie in (0, 0.5], got {self.rho!r}")
        if not (_is_int(self.max_age) and self.max_age >= 0):
            raise ValueError(f"{prefix}.max_age must be an integer >= 0 (steps), got {self.max_age!r}")
        if self.positive_threshold is not None and not (
            isinstance(self.positive_threshold, int | float) and math.isfinite(self.positive_threshold)
        ):
            raise ValueError(
                f"{prefix}.positive_threshold must be null or a finite number, got {self.positive_threshold!r}"
            )
        if not (_is_int(self.max_refills) and self.max_refills >= 0):
            raise ValueError(f"{prefix}.max_refills must be an integer >= 0, got {self.max_refills!r}")
        if not (_is_int(self.capacity_batches) and self.capacity_batches >= 1):
            raise ValueError(f"{prefix}.capacity_batches must be an integer >= 1, got {self.capacity_batches!r}")


@dataclass
class BatchingConfig:
    """The ``credit.batching`` block. Both options are off by default and work with every estimator.

    Attributes:
        query_preserved: bool, default False. Every global PPO mini-batch holds whole groups (all
            rollouts of a uid, across all dp ranks, every epoch), with sequence lengths balanced
            across ranks inside each mini-batch. Needs ``actor_rollout_ref.actor.shuffle=false``.
            Costs nothing on the GPU; verl's padding rows fill the gaps (short groups from failed
            rollouts may need a few more, logged as ``credit/batching/extra_padding/rows``).
        reward_balanced: the reward-balanced buffer, see :class:`RewardBalancedConfig`.
    """

    query_preserved: bool = False
    reward_balanced: RewardBalancedConfig = field(default_factory=RewardBalancedConfig)

    def __post_init__(self):
        if not isinstance(self.query_preserved, bool):
            raise ValueError(f"credit.batching.query_preserved must be true or false, got {self.query_preserved!r}")
        if isinstance(self.reward_balanced, dict):
            self.reward_balanced = RewardBalancedConfig(**self.reward_balanced)


@dataclass
class DiagnosticsConfig:
    """The ``credit.diagnostics`` block.

    Attributes:
        token_flip_every: int >= 0, default 0 (off). Every this many steps, after the actor update,
            recompute the log-probs of the same batch and log the share of tokens whose log-prob
            moved against the sign of their rollout's advantage (``credit/token_flip/*``). Costs
            one extra forward pass over the batch on those steps.
    """

    token_flip_every: int = 0

    def __post_init__(self):
        if not (_is_int(self.token_flip_every) and self.token_flip_every >= 0):
            raise ValueError(
                f"credit.diagnostics.token_flip_every must be an integer >= 0 (0 = off), got {self.token_flip_every!r}"
            )


# ----------------------------------------------------------------------------- query-preserved mini-batches


def group_rows(uids: Sequence[str], is_padding: Sequence[bool]) -> tuple[list[list[int]], list[int]]:
    """Rows of each group, in order of first appearance, and the free rows.

    Shape: (N,) -> G lists of row indices, plus the list of padding rows (which belong to no
    group: verl gives all its padding rows one shared ``pad<hex>`` uid, but they carry no loss).
    """
    if len(uids) != len(is_padding):
        raise ValueError(f"uids and is_padding differ in length: {len(uids)} != {len(is_padding)}")
    rows: dict[str, list[int]] = {}
    free = []
    for i, (uid, pad) in enumerate(zip(uids, is_padding, strict=True)):
        if pad:
            free.append(i)
        else:
            rows.setdefault(uid, []).append(i)
    return list(rows.values()), free


def pack_groups(sizes: Sequence[int], num_bins: int, capacity: int) -> list[list[int]] | None:
    """First-fit decreasing: place each group (largest first, ties in order) into the first of
    ``num_bins`` bins of ``capacity`` rows with room for it.

    Shape: (G,) sizes -> ``num_bins`` lists of group indices (in order of placement), or None when
    some group finds no bin. With equal sizes this keeps the input order: bin 0 gets the first
    ``capacity // size`` groups, and so on.
    """
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    room = [capacity] * num_bins
    first_open = 0  # bins before it are full to within the smallest size seen so far
    for g in sorted(range(len(sizes)), key=lambda g: -sizes[g]):
        size = sizes[g]
        for k in range(first_open, num_bins):
            if room[k] >= size:
                bins[k].append(g)
                room[k] -= size
                break
        else:
            return None
        while first_open < num_bins and room[first_open] == 0:
            first_open += 1
    return bins


def required_padding(group_sizes: Sequence[int], num_free: int, mini_batch_rows: int, batch_multiple: int) -> int:
    """Extra free rows so that whole groups pack into mini-batches of ``mini_batch_rows`` rows and
    the batch stays a multiple of ``batch_multiple`` (verl's dp / actor / critic mini-batch lcm).

    0 when every group has the same size n and M is a multiple of n (the usual case: verl's own
    padding already fills the last mini-batch). Short groups (failed rollouts) can need more; in the
    worst case a whole extra mini-batch (or lcm step) of padding.

    Raises ValueError for a group larger than a mini-batch.
    """
    M = mini_batch_rows
    if M <= 0 or batch_multiple <= 0:
        raise ValueError(f"mini_batch_rows and batch_multiple must be > 0, got {M} and {batch_multiple}")
    largest = max(group_sizes, default=0)
    if largest > M:
        raise ValueError(
            f"a group of {largest} rollouts does not fit a PPO mini-batch of {M} rollouts "
            "(actor.ppo_mini_batch_size * rollout.n): raise actor_rollout_ref.actor.ppo_mini_batch_size"
        )
    total = sum(group_sizes) + num_free
    step = math.lcm(M, batch_multiple) // M  # mini-batches per lcm block
    bins = max(1, math.ceil(total / M))
    bins = math.ceil(bins / step) * step
    while pack_groups(group_sizes, bins, M) is None:  # ends: G bins always hold G groups
        bins += step
    return bins * M - total


@dataclass(frozen=True)
class QueryPreservedLayout:
    """Result of :func:`query_preserved_layout`.

    Attributes:
        order: list of N row indices, the new row order (rank-major: rank 0's K slices, ...).
        minibatches: K lists of row indices, the rows of each global mini-batch.
        rank_rows: D lists of row indices, the rows each rank receives (K * m each).
    """

    order: list[int]
    minibatches: list[list[int]]
    rank_rows: list[list[int]]


def query_preserved_layout(
    uids: Sequence[str],
    is_padding: Sequence[bool],
    workloads: Sequence[float],
    mini_batch_rows: int,
    dp_size: int,
    balance: BalanceFn,
) -> QueryPreservedLayout:
    """Row order that keeps every group inside one global mini-batch, lengths balanced per rank.

    1. Whole groups are packed into K = N / M mini-batches (:func:`pack_groups`); padding rows
       fill the remaining slots.
    2. Inside each mini-batch, ``balance(workloads, D)`` splits its M rows into D parts of m rows
       (verl's ``get_seqlen_balanced_partitions(..., equal_size=True)`` in the trainer).
    3. The parts go to ranks heaviest part -> least loaded rank so far, which keeps the whole
       batch balanced across ranks as well (what verl's own balancing optimises).
    4. Rows are laid out rank-major, as verl's dispatch and worker cut them.

    Shape: (N,) uids, padding flags, workloads -> a permutation of range(N).
    Raises ValueError when N is not a multiple of M, M not a multiple of D, the groups do not fit
    (call :func:`required_padding` first), or ``balance`` returns parts of unequal size.
    """
    N, M, D = len(uids), mini_batch_rows, dp_size
    if len(workloads) != N:
        raise ValueError(f"workloads has {len(workloads)} rows, uids {N}")
    if M <= 0 or D <= 0 or M % D:
        raise ValueError(f"mini-batch of {M} rows cannot be split evenly over {D} dp ranks")
    if N % M:
        raise ValueError(f"batch of {N} rows is not a multiple of the mini-batch size {M}")
    groups, free = group_rows(uids, is_padding)
    K, m = N // M, M // D
    packed = pack_groups([len(g) for g in groups], K, M)
    if packed is None:
        raise ValueError(
            f"{len(groups)} groups of sizes {sorted({len(g) for g in groups})} do not fit {K} mini-batches of "
            f"{M} rows: add required_padding(...) rows first"
        )
    minibatches = []
    free_iter = iter(free)
    for bin_groups in packed:
        rows = [i for g in bin_groups for i in groups[g]]
        rows.extend(next(free_iter) for _ in range(M - len(rows)))
        minibatches.append(rows)

    rank_rows: list[list[int]] = [[] for _ in range(D)]
    rank_load = np.zeros(D)
    for rows in minibatches:
        parts = balance([float(workloads[i]) for i in rows], D)
        if len(parts) != D or any(len(p) != m for p in parts) or sorted(j for p in parts for j in p) != list(range(M)):
            raise ValueError(
                f"balance must split {M} rows into {D} parts of {m} rows, got sizes {[len(p) for p in parts]}"
            )
        loads = np.array([sum(float(workloads[rows[j]]) for j in p) for p in parts])
        # heaviest part to the least loaded rank (stable: ties keep rank / part order)
        for part_idx, rank in zip(np.argsort(-loads, kind="stable"), np.argsort(rank_load, kind="stable"), strict=True):
            rank_rows[rank].extend(rows[j] for j in parts[part_idx])
            rank_load[rank] += loads[part_idx]
    order = [i for r in range(D) for i in rank_rows[r]]
    return QueryPreservedLayout(order=order, minibatches=minibatches, rank_rows=rank_rows)


def worker_minibatches(num_rows: int, dp_size: int, mini_batch_rows: int, epochs: int = 1) -> list[list[int]]:
    """The global mini-batches verl's V1 worker forms from a batch of ``num_rows`` rows (no shuffle).

    Rank r receives the r-th of D contiguous chunks (``KVBatchMeta.chunk``: sizes N // D, the
    first N % D one larger) and cuts it into consecutive slices of m = M / D rows, every epoch in
    the same order; global mini-batch k (of epoch e) is the union of every rank's k-th slice.

    Shape: -> epochs * K lists of row positions. Raises ValueError where verl's worker would
    assert (M not a multiple of D, a rank's chunk not a multiple of m).
    """
    N, D, M = num_rows, dp_size, mini_batch_rows
    if M % D:
        raise ValueError(f"mini_batch_size {M} is not a multiple of the dp size {D} (verl's worker asserts)")
    m = M // D
    base, extra = divmod(N, D)
    starts = np.cumsum([0] + [base + (1 if r < extra else 0) for r in range(D)])
    sizes = np.diff(starts)
    if (sizes % m).any() or len(set(sizes.tolist())) != 1:
        raise ValueError(f"rank chunks of {sizes.tolist()} rows do not cut into mini-batches of {m} (verl asserts)")
    K = int(sizes[0]) // m
    one_epoch = [[int(starts[r]) + k * m + j for r in range(D) for j in range(m)] for k in range(K)]
    return [list(mb) for _ in range(epochs) for mb in one_epoch]


def split_groups(
    uids: Sequence[str], is_padding: Sequence[bool], minibatches: Sequence[Sequence[int]]
) -> dict[str, int]:
    """Groups whose rows land in more than one mini-batch: {uid: number of mini-batches it spans}.

    ``uids``/``is_padding`` are indexed by row position (after reordering); ``minibatches`` lists
    row positions of one epoch, e.g. from :func:`worker_minibatches` (with ``epochs=1``, or one
    epoch's slice of it). Padding rows are ignored.
    """
    spans: dict[str, set[int]] = {}
    for k, rows in enumerate(minibatches):
        for i in rows:
            if not is_padding[i]:
                spans.setdefault(uids[i], set()).add(k)
    return {uid: len(ks) for uid, ks in spans.items() if len(ks) > 1}


def minibatch_rank_loads(
    values: Sequence[float], order: Sequence[int], dp_size: int, mini_batch_rows: int
) -> np.ndarray:
    """Load of each (global mini-batch, rank) pair when rows are laid out in ``order``.

    loads[k, r] = sum of ``values[order[p]]`` over the positions p of rank r's k-th slice.
    Shape: (N,) values, (N,) order -> (K, D). Needs N a multiple of M and M of D (as verl).
    """
    v = np.asarray(values, dtype=np.float64)[np.asarray(order)]
    N, D, M = len(v), dp_size, mini_batch_rows
    if M % D or N % M:
        raise ValueError(f"N={N}, M={M}, D={D}: need N % M == 0 and M % D == 0")
    return v.reshape(D, N // M, M // D).sum(-1).T


def relative_imbalance(loads: np.ndarray) -> np.ndarray:
    """(max - min) / mean over the last axis (ranks); 0 where the mean is 0. Shape: (..., D) -> (...)."""
    loads = np.asarray(loads, dtype=np.float64)
    mean = loads.mean(-1)
    spread = loads.max(-1) - loads.min(-1)
    return np.divide(spread, mean, out=np.zeros_like(mean), where=mean > 0)


# ----------------------------------------------------------------------------- reward-balanced buffer


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

        Totals are cumulative since the buffer was built (not saved in checkpoints)."""
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


# ----------------------------------------------------------------------------- token flipping


def _rollout_signs(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sign of each rollout's mean advantage over its valid tokens. (B, T) -> (B,) in {-1, 0, 1}."""
    m = mask.to(advantages.dtype)
    return torch.sign((advantages * m).sum(-1))


def token_flip_shares(
    old_log_probs: torch.Tensor, new_log_probs: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, float]:
    """Share of tokens whose log-prob moved against their rollout's advantage sign (token flipping).

    s_i = sign(sum_t mask_it A_it) (the rollout's advantage sign; GRPO's A is constant per rollout),
    d_it = new_it - old_it. A valid token of a rollout with s_i != 0 flips when s_i d_it < 0.
        positive/share = #flips in rollouts with s_i > 0 / #their valid tokens
        negative/share = the same for s_i < 0
    NaN for a sign with no token. Also returns the token counts.

    Shape: (B, T) each -> dict of floats.
    """
    if not (old_log_probs.shape == new_log_probs.shape == advantages.shape == response_mask.shape):
        raise ValueError(
            "old_log_probs, new_log_probs, advantages and response_mask need one shape (B, T), got "
            f"{tuple(old_log_probs.shape)}, {tuple(new_log_probs.shape)}, {tuple(advantages.shape)}, "
            f"{tuple(response_mask.shape)}"
        )
    valid = response_mask.bool()
    sign = _rollout_signs(advantages.double(), response_mask)[:, None]  # (B, 1)
    flipped = (sign * (new_log_probs.double() - old_log_probs.double()) < 0) & valid  # (B, T)
    out = {}
    for name, rollouts in (("positive", sign > 0), ("negative", sign < 0)):
        tokens = valid & rollouts
        count = int(tokens.sum())
        out[f"{name}/share"] = float((flipped & rollouts).sum()) / count if count else float("nan")
        out[f"{name}/tokens"] = float(count)
    return out


def token_flip_shares_loop(old_log_probs, new_log_probs, advantages, response_mask) -> dict[str, float]:
    """Reference for :func:`token_flip_shares`: a Python loop over rollouts and tokens."""
    counts = {"positive": [0, 0], "negative": [0, 0]}  # [flips, tokens]
    for i in range(advantages.shape[0]):
        valid = [t for t in range(advantages.shape[1]) if response_mask[i, t]]
        total = sum(float(advantages[i, t]) for t in valid)
        if total == 0:
            continue
        name, s = ("positive", 1.0) if total > 0 else ("negative", -1.0)
        for t in valid:
            counts[name][1] += 1
            counts[name][0] += int(s * (float(new_log_probs[i, t]) - float(old_log_probs[i, t])) < 0)
    out = {}
    for name, (flips, tokens) in counts.items():
        out[f"{name}/share"] = flips / tokens if tokens else float("nan")
        out[f"{name}/tokens"] = float(tokens)
    return out
