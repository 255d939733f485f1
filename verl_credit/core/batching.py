"""Cancellation-preserving batching (METHODS.md section 5): pure logic, no verl imports.

Opposite-sign rollouts of one prompt cancel the updates of the tokens they share only when they
land in the same optimizer step. This module holds the configuration and the mini-batch layout:

Query-preserved mini-batches (``credit.batching.query_preserved``)
    group_rows(uids, is_padding)            -- (N,) -> G row lists + free (padding) rows.
    pack_groups(sizes, num_bins, capacity)  -- first-fit decreasing of whole groups into bins.
    required_padding(...)                   -- extra free rows needed so that whole groups fit.
    query_preserved_layout(...)             -- row order: whole groups per global mini-batch,
                                               lengths balanced across dp ranks inside each.
    worker_minibatches(...)                 -- the global mini-batches verl's V1 worker forms.
    split_groups(...)                       -- uids whose rows fall into more than one of them.
    minibatch_rank_loads(...)               -- (K, D) load per mini-batch and rank for an order.

Reward-balanced buffer policy: ``verl_credit.core.reward_buffer``. Token flipping metric:
``verl_credit.core.token_flip``.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from verl_credit.core.checks import is_int, is_number

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
]

BalanceFn = Callable[[list[float], int], list[list[int]]]


# ----------------------------------------------------------------------------- configuration


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
        if not (is_number(self.rho) and 0 < self.rho <= 0.5):
            raise ValueError(f"{prefix}.rho must lie in (0, 0.5], got {self.rho!r}")
        if not (is_int(self.max_age) and self.max_age >= 0):
            raise ValueError(f"{prefix}.max_age must be an integer >= 0 (steps), got {self.max_age!r}")
        if self.positive_threshold is not None and not is_number(self.positive_threshold):
            raise ValueError(
                f"{prefix}.positive_threshold must be null or a finite number, got {self.positive_threshold!r}"
            )
        if not (is_int(self.max_refills) and self.max_refills >= 0):
            raise ValueError(f"{prefix}.max_refills must be an integer >= 0, got {self.max_refills!r}")
        if not (is_int(self.capacity_batches) and self.capacity_batches >= 1):
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
        if not (is_int(self.token_flip_every) and self.token_flip_every >= 0):
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
