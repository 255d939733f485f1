"""Counterfactual stage time, tree vs naive scoring, on a 0.5B-class model shape (random weights).

    python tests/gpu/tree_timing.py --device cuda                 # Qwen2.5-0.5B shape, bf16, 2k-token rollouts
    python tests/gpu/tree_timing.py --device cpu --small          # the same code on a tiny shape (a dry run)

Builds a randomly initialised ``Qwen2ForCausalLM`` with the shape of Qwen2.5-0.5B (hidden 896, 24
layers, 14 heads / 2 KV heads, 151,936-token vocabulary; nothing is downloaded), synthetic rollouts
(prompt 256 + response ~1,792 tokens, 8 spans of 40 tokens spread over the response, the answer the
last 8 tokens), and scores them with ``scoring.HFScorer`` (the code ``explain`` and the benchmarks run;
the workers' tree forward uses the same ``tree.forward_trees``) in both modes, SDPA attention, the
same token budget. Prints per mode: forward tokens, best wall time of ``--repeats`` (after a warm-up),
peak GPU memory; then the ratios and the largest |score difference| between the modes (bf16: loose).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def build(device: str, small: bool, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if small:
        cfg = Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            max_position_embeddings=4096,
        )
    else:
        cfg = Qwen2Config(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
        )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype).eval(), cfg.vocab_size


def rollouts(n: int, prompt: int, response: int, spans: int, vocab: int):
    """Variant sequences (original first, then one per span), targets and rollout ids, as score_spans builds them."""
    gen = torch.Generator().manual_seed(0)
    seqs, targets, groups = [], [], []
    for r in range(n):
        base = torch.randint(10, vocab, (prompt + response,), generator=gen)
        starts = [prompt + (k + 1) * response // (spans + 1) - 20 for k in range(spans)]
        for s in [None, *starts]:
            seq = base.clone()
            if s is not None:
                seq[s : s + 40] = 0
            seqs.append(seq)
            targets.append([prompt + response - 8, prompt + response])
            groups.append(r)
    return seqs, torch.tensor(targets), torch.tensor(groups)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shape and short rollouts (try the script on CPU)")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument(
        "--budget", type=int, default=32768, help="tokens per forward (credit.counterfactual.max_batch_tokens)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from verl_credit.scoring import HFScorer

    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model, vocab = build(args.device, args.small, dtype)
    prompt, response = (32, 96) if args.small else (256, 1792)
    seqs, targets, groups = rollouts(args.rollouts, prompt, response, 8, vocab)
    print(
        f"device {args.device} ({torch.cuda.get_device_name() if cuda else 'cpu'}), dtype {dtype}, "
        f"{args.rollouts} rollouts of {prompt + response} tokens x 9 sequences, budget {args.budget}",
        flush=True,
    )
    results = {}
    for mode in ("naive", "tree"):
        scorer = HFScorer(model, 0, args.budget)
        run = (lambda s=scorer: s(seqs, targets)) if mode == "naive" else (lambda s=scorer: s(seqs, targets, groups))
        run()  # warm-up (kernels, allocator)
        best = float("inf")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = run()
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        tokens = scorer.forward_tokens // (args.repeats + 1)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        results[mode] = (out, tokens, best)
        print(f"MODE {mode}: forward tokens {tokens}, best wall {best:.3f}s, peak memory {peak:.2f} GiB", flush=True)
    (a, ta, wa), (b, tb, wb) = results["naive"], results["tree"]
    diff = max(float((x.double().sum() - y.double().sum()).abs()) for x, y in zip(a, b, strict=True))
    print(
        f"RESULT tree/naive: tokens {tb / ta:.3f}x, wall {wb / wa:.3f}x (speed-up {wa / wb:.2f}x), "
        f"max |answer log-prob sum difference| {diff:.3e} nats",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
