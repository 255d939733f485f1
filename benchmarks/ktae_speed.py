"""Speed of the vectorised KTAE estimator against the package's reference loop and the authors' code.

Times ``ktae_advantages`` (vectorised over the batch) and ``ktae_advantages_loop`` (Python loop over groups and
their token ids) on synthetic batches: Zipf token ids over a 151,936-token vocabulary (ranks through a fixed
random permutation), right-padded responses of length uniform in [T/4, T] ending in EOS, binary rewards with a
per-group pass rate in (0, 1), 16 rollouts per uid ``g{k}``, Qwen's pad/EOS ids [151643, 151645] ignored.
Configs: small 8 x 16 x 1024, large 128 x 16 x 2048. Exits 1 if advantages or key-token values K differ by
more than 1e-5.

With a local checkout of the authors' repository (github xiaolizh1/KTAE; ``--authors-repo PATH`` or the
environment variable ``KTAE_AUTHORS_REPO``), their ``compute_ktae_outcome_advantage_and_keytokens`` is timed
on the same batch too, and compared with ours run with their settings (default ``fisher="authors"``, K = 0
for id 151643 only; exits 1 above 1e-5 outside groups of one). It needs only their two files
``verl/workers/actor/compute_key_tokens.py`` and ``verl/trainer/ppo/core_algos.py`` plus an installed verl
(for ``verl.utils.torch_functional``); without them that column is skipped, with the reason.

    python benchmarks/ktae_speed.py                  # full loop on both configs (minutes)
    python benchmarks/ktae_speed.py --quick          # smaller sizes: a smoke test in seconds
    python benchmarks/ktae_speed.py --loop-groups 8 --json out.json
    KTAE_AUTHORS_REPO=~/src/KTAE python benchmarks/ktae_speed.py --loop-groups 8

All run in one process on the same machine and batch: each speed-up is a ratio measured in one run (with
--loop-groups N the loop and the authors' code cover N large groups and are scaled up, marked "~"). The loop
is called per group, to report progress: same arithmetic, nothing skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.ktae import KTAEParams, ktae_advantages, ktae_advantages_loop

VOCAB, GROUP_SIZE, ZIPF_A = 151_936, 16, 1.2
PAD_ID, EOS_ID, TOLERANCE = 151_643, 151_645, 1e-5  # Qwen2.5's <|endoftext|> (pad) and <|im_end|>
AUTHORS_IGNORED_ID = 151_643  # the one id their code forces to K = 0
AUTHORS_FILES = ("verl/workers/actor/compute_key_tokens.py", "verl/trainer/ppo/core_algos.py")
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


def load_authors(repo: str | None):
    """(their advantage function, None) from a checkout of xiaolizh1/KTAE, or (None, why not)."""
    if not repo:
        return None, "no checkout given (--authors-repo or KTAE_AUTHORS_REPO)"
    root = Path(repo).expanduser()
    missing = [f for f in AUTHORS_FILES if not (root / f).is_file()]
    if missing:
        return None, f"{root} lacks {', '.join(missing)}"

    def load(name: str, path: Path):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    try:
        key_tokens = load("_ktae_authors_key_tokens", root / AUTHORS_FILES[0])
        # their advantage function imports its helper by this name at call time
        sys.modules["verl.workers.actor.compute_key_tokens"] = key_tokens
        algos = load("_ktae_authors_core_algos", root / AUTHORS_FILES[1])
        return algos.compute_ktae_outcome_advantage_and_keytokens, None
    except Exception as exc:  # their module needs verl (and transformers) importable
        return None, f"could not import their code: {type(exc).__name__}: {exc}"


def time_authors(fn, batch, n_groups: int, name: str):
    """Their estimator on the first ``n_groups`` groups, in one call: (advantages, seconds).

    Inputs in their format: the reward on the last valid token, the mask, uids as a numpy object array.
    """
    responses, mask, scores, uids = batch
    rows = n_groups * GROUP_SIZE
    responses, mask, scores = responses[:rows], mask[:rows], scores[:rows]
    if int(responses.max()) < AUTHORS_IGNORED_ID:  # their K vector is indexed at that id
        raise ValueError(f"their code needs a token id >= {AUTHORS_IGNORED_ID} in the batch")
    token_rewards = torch.zeros(responses.shape, dtype=torch.float32)
    last = (mask.sum(1) - 1).clamp_min(0)
    token_rewards[torch.arange(rows), last] = scores
    index = np.array(uids[:rows], dtype=object)
    print(f"  {name} authors' code: {n_groups} groups ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    adv, _ = fn(token_rewards, responses, mask, index)
    elapsed = time.perf_counter() - start
    print(f" {elapsed:.1f} s", file=sys.stderr)
    return adv, elapsed


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


def bench(name: str, groups: int, T: int, seed: int, repeats: int, loop_groups: int | None, authors=None) -> dict:
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
    r["authors_s"] = r["authors_full_s"] = r["authors_ratio"] = r["max_abs_diff_authors"] = None
    if authors is not None:
        # ours with their settings (K = 0 for their one id), timed like the vectorised call above
        their_params = KTAEParams(ignore_token_ids=[AUTHORS_IGNORED_ID])
        ours, ours_times = time_vectorised(batch, their_params, repeats)
        adv_theirs, authors_s = time_authors(authors, batch, n, name)
        ours_s = statistics.median(ours_times)
        r.update(authors_s=authors_s, authors_full_s=authors_s * groups / n, ours_authors_settings_s=ours_s)
        r["authors_ratio"] = r["authors_full_s"] / ours_s
        r["max_abs_diff_authors"] = float((ours.advantages[:rows] - adv_theirs).abs().max())  # no group of one here
    return r


def table(results: list[dict]) -> str:
    lines = [
        "| config | B x T | valid tokens | vectorised s | loop s | speed-up | max abs diff (A / K) "
        "| authors' code s | authors / ours | max abs diff vs authors (A) |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        approx = "~" if r["extrapolated"] else ""
        part = f" ({r['loop_groups']}/{r['groups']} groups: {r['loop_s']:.2f})" if r["extrapolated"] else ""
        if r["authors_s"] is None:
            authors = "skipped | - | -"
        else:
            authors = (
                f"{approx}{r['authors_full_s']:.2f} | {approx}{r['authors_ratio']:.0f}x "
                f"(ours {r['ours_authors_settings_s']:.4f} s) | {r['max_abs_diff_authors']:.1e}"
            )
        lines.append(
            f"| {r['config']} | {r['B']} x {r['T']} | {r['valid_tokens']:,} | {r['vectorised_s']:.4f} "
            f"| {approx}{r['loop_full_s']:.2f}{part} | {approx}{r['speedup']:.0f}x "
            f"| {r['max_abs_diff_adv']:.1e} / {r['max_abs_diff_k']:.1e} | {authors} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--loop-groups", type=int, help="time the loop on the first N groups of the large batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed vectorised calls after the warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--authors-repo",
        default=os.environ.get("KTAE_AUTHORS_REPO"),
        help="checkout of github xiaolizh1/KTAE: also time their estimator (default: $KTAE_AUTHORS_REPO)",
    )
    args = parser.parse_args()
    if args.loop_groups is not None and args.loop_groups < 1:
        parser.error("--loop-groups must be >= 1")

    wall_start = time.perf_counter()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, torch.get_num_threads() = {threads}", file=sys.stderr)
    authors, why_not = load_authors(args.authors_repo)
    if authors is None:
        print(f"authors' estimator skipped: {why_not}", file=sys.stderr)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    results = [
        bench(name, groups, T, args.seed + i, args.repeats, args.loop_groups if name == "large" else None, authors)
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
    if authors is None:
        print(f"authors' estimator: skipped ({why_not})")
    print(f"total wall time: {wall_s:.1f} s")
    if args.json:
        meta = dict(torch=torch.__version__, threads=threads, quick=args.quick, seed=args.seed, wall_s=wall_s)
        meta["authors"] = args.authors_repo if authors is not None else f"skipped: {why_not}"
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "targets": targets}, f, indent=2)

    status = 0
    for r in results:
        if not (r["max_abs_diff_adv"] <= TOLERANCE and r["max_abs_diff_k"] <= TOLERANCE):  # NaN fails too
            diffs = f"{r['max_abs_diff_adv']:.3g} (advantages), {r['max_abs_diff_k']:.3g} (K)"
            print(f"MISMATCH in {r['config']}: vectorised vs loop differ by {diffs} > {TOLERANCE}", file=sys.stderr)
            status = 1
        if r["max_abs_diff_authors"] is not None and not r["max_abs_diff_authors"] <= TOLERANCE:
            print(
                f"MISMATCH in {r['config']}: ours vs the authors' code differ by {r['max_abs_diff_authors']:.3g}",
                file=sys.stderr,
            )
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
