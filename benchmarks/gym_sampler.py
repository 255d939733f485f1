"""The gym's sampler (``verl_credit.gym.sampler.generate``) against transformers' ``model.generate``.

    python benchmarks/gym_sampler.py [--model DIR] [--samples 4 16] [--repeats 3]

Both decode the same held-out prompts (the gym's default task, 128 problems x k samples, temperature 1,
48 new tokens) with one torch thread, as each gym worker does. ``--model`` is a gym warm start
(``<gym --out>/model``); without it a random tiny Qwen2 with the gym's tokenizer is built (its
responses run to the length cap, so the finished-row saving does not show). Printed per k: ms per
sample for each, the ratio, and the mean pass@1 and length of both (the same law, so they agree
within sampling noise); and whether greedy decoding gives the same tokens.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch

from verl_credit.gym.model import load_policy
from verl_credit.gym.sampler import generate, through_first_eos
from verl_credit.gym.task import TaskConfig, demonstration, grade, make_problems
from verl_credit.testing import build_tiny_qwen2


def _hf(model, tokenizer, enc, greedy):
    out = model.generate(
        **enc,
        do_sample=not greedy,
        temperature=None if greedy else 1.0,
        top_k=None if greedy else 0,
        top_p=None if greedy else 1.0,
        max_new_tokens=48,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return through_first_eos(out[:, enc["input_ids"].shape[1] :], tokenizer.eos_token_id, tokenizer.pad_token_id)


def _ours(model, tokenizer, enc, greedy):
    ids, mask = enc["input_ids"], enc["attention_mask"]
    return generate(model, ids, mask, 48, tokenizer.eos_token_id, tokenizer.pad_token_id, greedy)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a gym warm start folder (default: a random tiny model)")
    parser.add_argument("--samples", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.model:
        path = args.model
    else:
        rng = random.Random(0)
        problems = make_problems(300, seed=0)
        corpus = [p.prompt + "".join(s.text for s in demonstration(p, rng)) for p in problems]
        path = build_tiny_qwen2(tempfile.mkdtemp(), corpus, vocab_size=400)
    model, tokenizer = load_policy(path)
    model.eval()
    problems = make_problems(128, seed=3, config=TaskConfig())
    enc = tokenizer([p.prompt for p in problems], return_tensors="pt", padding=True, add_special_tokens=False)
    greedy = [f(model, tokenizer, enc, True) for f in (_hf, _ours)]
    width = min(g[0].shape[1] for g in greedy)
    same = all(torch.equal(greedy[0][i][:, :width], greedy[1][i][:, :width]) for i in (0, 1))
    print(f"greedy decoding, 128 prompts: same tokens = {same}")
    print("k   | transformers ms/sample | gym sampler ms/sample | ratio | pass@1 (hf / ours) | length (hf / ours)")
    for k in args.samples:
        rows = [p for p in problems for _ in range(k)]
        batch = tokenizer([p.prompt for p in rows], return_tensors="pt", padding=True, add_special_tokens=False)
        result = {}
        for name, f in (("hf", _hf), ("ours", _ours)):
            seconds, acc, length = 0.0, 0.0, 0.0
            for repeat in range(args.repeats):
                torch.manual_seed(repeat)
                start = time.perf_counter()
                responses, mask = f(model, tokenizer, batch, False)
                seconds += time.perf_counter() - start
                texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
                acc += sum(grade(t, p) for t, p in zip(texts, rows, strict=True)) / len(rows)
                length += float(mask.sum(1).float().mean())
            n = args.repeats
            result[name] = (seconds / n / len(rows) * 1e3, acc / n, length / n)
        (h, ha, hl), (o, oa, ol) = result["hf"], result["ours"]
        print(f"{k:<3} | {h:22.2f} | {o:21.2f} | {h / o:5.2f} | {ha:.3f} / {oa:.3f} | {hl:.1f} / {ol:.1f}")


if __name__ == "__main__":
    main()
