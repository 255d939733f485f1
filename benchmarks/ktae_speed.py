"""Speed of the vectorised KTAE estimator against the package's reference loop.

Times ``ktae_advantages`` (vectorised over the batch) and ``ktae_advantages_loop`` (Python loop over groups and
their token ids) on synthetic batches: Zipf token ids over a 151,936-token vocabulary (ranks through a fixed
random permutation), right-padded responses of length uniform in [T/4, T] ending in EOS, binary rewards with a
per-group pass rate in (0, 1), 16 rollouts per uid ``g{k}``, pad/EOS ids [0, 1] ignored. Configs: small
8 x 16 x 1024, large 128 x 16 x 2048. Exits 1 if advantages or key-token values K differ by more than 1e-5.

    python benchmarks/ktae_speed.py                  # full loop on both configs (minutes)
    python benchmarks/ktae_speed.py --quick          # smaller sizes: a smoke test in seconds
    python benchmarks/ktae_speed.py --loop-groups 8 --json out.json

Both run in one process on the same machine and batch: each speed-up is a ratio measured in one run (with
--loop-groups N the loop covers N large groups and is scaled up, marked "~"). The loop is called per group,
to report progress: same arithmetic, nothing skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.ktae import KTAEParams, ktae_advantages, ktae_advantages_loop

VOCAB, GROUP_SIZE, ZIPF_A = 151_936, 16, 1.2
PAD_ID, EOS_ID, TOLERANCE = 0, 1, 1e-5
CONFIGS = {"small": (8, 1024), "large": (128, 2048)}  # name: (groups, T)
QUICK_CONFIGS = {"small": (4, 256), "large": (16, 512)}


def make_batch(groups: int, T: int, seed: int):
    """(responses [B, T], response_mask [B, T], scores [B], uids) for groups x 16 rollouts; deterministic."""
    rng = np.random.default_rng(seed)
    B = groups * GROUP_SIZE
    weights = np.arange(1, VOCAB + 1, dtype=np.float64) ** -ZIPF_A  # Zipf law truncated to the vocab
    id_of_rank = rng.permutation(VOCAB)
    tokens = id_of_rank[rng.choice(VOCAB, size=(B, T), p=weights / weights.sum())]
    lengths = rng.integers(T // 4, T + 1, size=B)
    mask = np.arange(T)[None, :] < lengths[:, None]
    tokens[np.arange(B), lengths - 1] = EOS_ID
    tokens[~mask] = PAD_ID
    pass_rate = np.repeat(rng.uniform(0.0, 1.0, size=groups), GROUP_SIZE)
    scores = (rng.random(B) < pass_rate).astype(np.float32)
    uids = [f"g{k}" for k in range(groups) for _ in range(GROUP_SIZE)]
    return torch.from_numpy(tokens), torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(scores), uids


def time_vectorised(batch, params: KTAEParams, repeats: int):
    """Warm-up once, then ``repeats`` timed calls (uid -> group index included): (result, seconds per call)."""
    responses, mask, scores, uids = batch
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        result = ktae_advantages(responses, mask, scores, group_index_from_uids(uids), params)
        times.append(time.perf_counter() - start)
    return result, times[1:]


def time_loop(batch, params: KTAEParams, n_groups: int, name: str):
    """The reference loop on the first ``n_groups`` groups, one call per group: (advantages, K, seconds)."""
    responses, mask, scores, uids = batch
    outputs, elapsed = [], 0.0
    for k in range(n_groups):
        rows = slice(k * GROUP_SIZE, (k + 1) * GROUP_SIZE)
        start = time.perf_counter()
        outputs.append(ktae_advantages_loop(responses[rows], mask[rows], scores[rows], uids[rows], params))
        elapsed += time.perf_counter() - start
        print(f"\r  {name} loop: group {k + 1}/{n_groups}, {elapsed:.1f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    adv, key = (torch.cat(parts) for parts in zip(*outputs, strict=True))
    return adv, key, elapsed


def bench(name: str, groups: int, T: int, seed: int, repeats: int, loop_groups: int | None) -> dict:
    batch = make_batch(groups, T, seed)
    params = KTAEParams(ignore_token_ids=[PAD_ID, EOS_ID])
    result, vec_times = time_vectorised(batch, params, repeats)
    vec_s = statistics.median(vec_times)
    print(f"  {name} vectorised: {vec_s:.4f} s (median of {repeats})", file=sys.stderr)
    n = groups if loop_groups is None else min(loop_groups, groups)
    adv_loop, k_loop, loop_s = time_loop(batch, params, n, name)
    rows = n * GROUP_SIZE
    r = dict(config=name, B=groups * GROUP_SIZE, T=T, valid_tokens=int(batch[1].sum()), groups=groups)
    r.update(mixed_groups=int(result.mixed_groups.sum()), loop_groups=n, extrapolated=n < groups)
    r.update(vectorised_s=vec_s, vectorised_times_s=vec_times, loop_s=loop_s, loop_full_s=loop_s * groups / n)
    r["speedup"] = r["loop_full_s"] / vec_s
    r["max_abs_diff_adv"] = float((result.advantages[:rows] - adv_loop).abs().max())
    r["max_abs_diff_k"] = float((result.key_token_values[:rows] - k_loop).abs().max())
    return r


def table(results: list[dict]) -> str:
    lines = ["| config | B x T | valid tokens | vectorised s | loop s | speed-up | max abs diff (A / K) |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in results:
        approx = "~" if r["extrapolated"] else ""
        part = f" ({r['loop_groups']}/{r['groups']} groups: {r['loop_s']:.2f})" if r["extrapolated"] else ""
        lines.append(
            f"| {r['config']} | {r['B']} x {r['T']} | {r['valid_tokens']:,} | {r['vectorised_s']:.4f} "
            f"| {approx}{r['loop_full_s']:.2f}{part} | {approx}{r['speedup']:.0f}x "
            f"| {r['max_abs_diff_adv']:.1e} / {r['max_abs_diff_k']:.1e} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--loop-groups", type=int, help="time the loop on the first N groups of the large batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed vectorised calls after the warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()
    if args.loop_groups is not None and args.loop_groups < 1:
        parser.error("--loop-groups must be >= 1")

    wall_start = time.perf_counter()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, torch.get_num_threads() = {threads}", file=sys.stderr)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    results = [
        bench(name, groups, T, args.seed + i, args.repeats, args.loop_groups if name == "large" else None)
        for i, (name, (groups, T)) in enumerate(configs.items())
    ]
    large = next(r for r in results if r["config"] == "large")
    min_speedup = min(r["speedup"] for r in results)
    targets = {"speedup_ge_100x": min_speedup >= 100, "large_vectorised_lt_1s": large["vectorised_s"] < 1.0}
    wall_s = time.perf_counter() - wall_start

    print(f"\ntorch {torch.__version__}, {threads} threads{', --quick' if args.quick else ''}\n\n{table(results)}\n")
    verdict = {True: "PASS", False: "FAIL"}
    extrapolated = " (extrapolated)" if any(r["extrapolated"] for r in results) else ""
    print(f"speed-up >= 100x (min {min_speedup:.0f}x){extrapolated}: {verdict[targets['speedup_ge_100x']]}")
    print(f"large vectorised < 1 s ({large['vectorised_s']:.3f} s): {verdict[targets['large_vectorised_lt_1s']]}")
    print(f"total wall time: {wall_s:.1f} s")
    if args.json:
        meta = dict(torch=torch.__version__, threads=threads, quick=args.quick, seed=args.seed, wall_s=wall_s)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "targets": targets}, f, indent=2)

    status = 0
    for r in results:
        if not (r["max_abs_diff_adv"] <= TOLERANCE and r["max_abs_diff_k"] <= TOLERANCE):  # NaN fails too
            diffs = f"{r['max_abs_diff_adv']:.3g} (advantages), {r['max_abs_diff_k']:.3g} (K)"
            print(f"MISMATCH in {r['config']}: vectorised vs loop differ by {diffs} > {TOLERANCE}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
