"""Cancellation-preserving batching: what the reward-balanced buffer keeps, what query-preserved costs.

    python benchmarks/batching.py [--steps 200] [--quick]

1. Reward-balanced buffer (the pure policy, ``RewardBalancedPool`` + ``fill_batch``, exactly what
   ``RewardBalancedReplayBuffer`` runs each step) on synthetic reward streams with pass rates 0.1,
   0.5, 0.9. Each step submits one batch of prompts (as verl's ``prepare_step``); the buffer may ask
   for more. Two streams: "iid" (every rollout correct with probability p) and "prompt" (a prompt's
   own pass rate q ~ Beta(2p, 2(1-p)), so most groups are all-correct or all-wrong, as on real data).
   Reported: utilisation = trained / generated rollouts, generated per trained rollout (generation
   cost), mean age of trained rollouts (steps), mean positive share of the trained batches (the
   stock sampler's is the pass rate), share of forced (unbalanced) releases, dropped by age.
2. Query-preserved ordering vs verl's ``_balance_batch`` ordering on the same batch, per step:
   CPU time of the reordering (verl: ``calculate_workload`` + ``get_seqlen_balanced_partitions`` over
   the batch; ours: group packing + the same function per mini-batch), groups split across optimizer
   steps, and rank imbalance ((max - min) / mean tokens) inside each mini-batch and over the batch.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import numpy as np
import torch
from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions

from verl_credit.core.batching import (
    group_rows,
    minibatch_rank_loads,
    query_preserved_layout,
    relative_imbalance,
    required_padding,
    split_groups,
    worker_minibatches,
)
from verl_credit.core.reward_buffer import GroupRecord, RewardBalancedPool, fill_batch


def buffer_run(pass_rate: float, stream: str, steps: int, batch_size: int, n: int, seed: int) -> dict:
    pool = RewardBalancedPool(rho=0.25, max_age=2, max_refills=2, capacity_batches=4)
    rng = np.random.default_rng(seed)
    counter = iter(range(10**9))

    def generate(k: int, step: int) -> None:
        if stream == "iid":
            q = np.full(k, pass_rate)
        else:
            q = rng.beta(2 * pass_rate, 2 * (1 - pass_rate), k)
        for positives in rng.binomial(n, q):
            pool.add(GroupRecord(uid=f"g{next(counter)}", size=n, positives=int(positives), step=step))

    ages, shares, forced = [], [], 0
    for step in range(1, steps + 1):
        generate(batch_size, step)
        decision = fill_batch(pool, step, batch_size, lambda k, step=step: generate(k, step))
        ages.append(pool.last_release["released_age/mean"])
        shares.append(decision.positive_share)
        forced += decision.reason == "forced"
    m = pool.metrics()
    generated = m["generated/rollouts_total"]
    return {
        "utilisation": m["trained/rollouts_total"] / generated,
        "generated_per_trained": generated / m["trained/rollouts_total"],
        "mean_age": float(np.mean(ages)),
        "share": float(np.mean(shares)),
        "forced": forced / steps,
        "dropped_age": m["dropped_age/rollouts_total"] / generated,
    }


def stock_order(seqlen: torch.Tensor, dp: int) -> list[int]:
    """The reordering inside verl's ``_balance_batch`` (after its padding)."""
    parts = get_seqlen_balanced_partitions(calculate_workload(seqlen), k_partitions=dp, equal_size=True)
    return [j for part in parts for j in part]


def ours_order(uids, is_padding, seqlen: torch.Tensor, M: int, dp: int) -> list[int]:
    """What ``QueryPreservedBatchingMixin._balance_batch`` computes (minus TransferQueue calls)."""
    groups, free = group_rows(uids, is_padding)
    extra = required_padding([len(g) for g in groups], len(free), M, math.lcm(M, dp))
    assert extra == 0
    balance = lambda w, k: get_seqlen_balanced_partitions(w, k_partitions=k, equal_size=True)  # noqa: E731
    return query_preserved_layout(uids, is_padding, calculate_workload(seqlen).tolist(), M, dp, balance).order


def ordering_run(prompts: int, n: int, dp: int, mini: int, repeats: int, seed: int) -> dict:
    rng = random.Random(seed)
    M = mini * n
    uids = [f"u{g}" for g in range(prompts) for _ in range(n)]
    rng.shuffle(uids)
    is_padding = [False] * len(uids)
    # response lengths: long-tailed, as in reasoning RL (prompt 100-600 tokens, response up to 8k)
    seqlen = torch.tensor([rng.randint(100, 600) + min(int(rng.expovariate(1 / 1500)), 8192) for _ in uids])

    def timed(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return out, statistics.median(times)

    stock, t_stock = timed(lambda: stock_order(seqlen, dp))
    ours, t_ours = timed(lambda: ours_order(uids, is_padding, seqlen, M, dp))
    out = {"rows": len(uids), "M": M, "t_stock": t_stock, "t_ours": t_ours}
    for name, order in (("stock", stock), ("ours", ours)):
        loads = minibatch_rank_loads(seqlen.tolist(), order, dp, M)
        moved = [uids[i] for i in order]
        out[f"split_{name}"] = len(split_groups(moved, [False] * len(moved), worker_minibatches(len(moved), dp, M)))
        out[f"mb_{name}"] = float(relative_imbalance(loads).mean())
        out[f"whole_{name}"] = float(relative_imbalance(loads.sum(0)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller batches (CI)")
    args = parser.parse_args()
    steps = 40 if args.quick else args.steps
    batch_size, n = (32, 8) if args.quick else (128, 8)

    print(
        f"## Reward-balanced buffer (rho=0.25, max_age=2, max_refills=2, capacity 4 batches; "
        f"{batch_size} prompts x n={n} per batch, {steps} steps)\n"
    )
    print(
        "| stream | pass rate | utilisation | generated / trained | mean age of trained (steps) "
        "| positive share of trained | forced releases | dropped by age |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for stream in ("iid", "prompt"):
        for p in (0.1, 0.5, 0.9):
            r = buffer_run(p, stream, steps, batch_size, n, seed=0)
            print(
                f"| {stream} | {p} | {r['utilisation']:.3f} | {r['generated_per_trained']:.2f} | "
                f"{r['mean_age']:.2f} | {r['share']:.3f} | {r['forced']:.2f} | {r['dropped_age']:.3f} |"
            )

    shapes = [(64, 8, 4, 16), (256, 8, 8, 64), (512, 16, 16, 128)]
    if args.quick:
        shapes = shapes[:2]
    print("\n## Query-preserved ordering vs verl's _balance_batch ordering (median of 5, CPU)\n")
    print(
        "| prompts x n | dp | mini-batch rows | verl ms | ours ms | overhead ms | groups split verl / ours "
        "| mini-batch imbalance verl / ours | whole-batch imbalance verl / ours |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for prompts, n_, dp, mini in shapes:
        r = ordering_run(prompts, n_, dp, mini, repeats=5, seed=1)
        print(
            f"| {prompts} x {n_} | {dp} | {r['M']} | {1e3 * r['t_stock']:.1f} | {1e3 * r['t_ours']:.1f} | "
            f"{1e3 * (r['t_ours'] - r['t_stock']):+.1f} | {r['split_stock']}/{prompts} / {r['split_ours']} | "
            f"{r['mb_stock']:.3f} / {r['mb_ours']:.4f} | {r['whole_stock']:.5f} / {r['whole_ours']:.5f} |"
        )


if __name__ == "__main__":
    main()
