"""Real verl PPO steps on the CPU, one run per configuration: wall time, step times, the stage's share.

Each run is ``verl-credit smoke`` (verl's own main_ppo, trainer, FSDP2 workers on gloo, TransferQueue,
agent loop; tiny Qwen2, 4 prompts x 4 rollouts, 24-token responses; the ``*_long`` runs use the
"long" workspace: 3-5 spans per solution, 100-token responses). Printed per run: the wall time
of the whole process (Ray start-up included), the time of each step (``timing_s/step``), the scoring
stage's time and its share of the step (``timing_s/credit_scoring_stage / timing_s/step``), and the
stage's forward tokens against the naive count. Step 1 includes the agent loop's first requests.

    python benchmarks/real_steps.py                     # every configuration, ~6-8 min on 2 cores
    python benchmarks/real_steps.py --only ktae,counterfactual --steps 3
"""

from __future__ import annotations

import argparse
import tempfile

from verl_credit.cpu.smoke import COMBINED_FEATURES, SOLUTIONS, build_workspace, run, smoke_overrides

CONFIGS = {
    "grpo": ("grpo", [], {}),
    "ktae": ("ktae", [], {}),
    "counterfactual": ("counterfactual", ["credit.counterfactual.answer_source=gold"], {}),
    "counterfactual_dp2": ("counterfactual", ["credit.counterfactual.answer_source=gold"], {"dp": 2}),
    "variance_weighted": ("variance_weighted", [], {}),
    "combined": ("ktae", list(COMBINED_FEATURES), {"remove_padding": True}),
    # the "long" workspace (3-5 spans per 100-token solution): the stage with tree vs naive scoring
    "counterfactual_long_tree": ("counterfactual", [], {"solutions": "long"}),
    "counterfactual_long_naive": ("counterfactual", ["credit.counterfactual.scoring=naive"], {"solutions": "long"}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="real_steps_")
    workspaces = {}
    print(f"{'run':<20} {'wall s':>7}  {'step times s':<22} {'stage s (share)':<28} {'tokens vs naive':>15}")
    failed = 0
    for name in args.only.split(","):
        estimator, extra, kw = CONFIGS[name]
        dp, solutions = kw.pop("dp", 1), kw.pop("solutions", "short")
        if solutions not in workspaces:
            workspaces[solutions] = build_workspace(f"{root}/{solutions}", solutions=solutions)
        ws, (_, _, prompt, response) = workspaces[solutions], SOLUTIONS[solutions]
        overrides = smoke_overrides(
            ws, estimator, args.steps, dp, prompt_length=prompt, response_length=response, extra=extra, **kw
        )
        result = run(ws, overrides, args.timeout)
        if result.returncode != 0 or len(result.steps) < args.steps:
            failed += 1
            print(f"{name:<20} FAILED (exit {result.returncode}); log tail:\n{result.log_tail[-1500:]}")
            continue
        steps = [r["timing_s/step"] for r in result.steps]
        stage = [r.get("timing_s/credit_scoring_stage", 0.0) for r in result.steps]
        share = ", ".join(f"{s:.2f} ({s / t:.0%})" for s, t in zip(stage, steps, strict=True)) if any(stage) else "-"
        ratio = [  # steps where the stage forwarded something (a step with no contrast scores nothing)
            r["credit/stage/forward_tokens_vs_naive/ratio"]
            for r in result.steps
            if r.get("credit/stage/forward_tokens/count", 0) > 0
        ]
        print(
            f"{name:<20} {result.wall_s:7.1f}  {', '.join(f'{t:.1f}' for t in steps):<22} {share:<28} "
            f"{(f'{sum(ratio) / len(ratio):.3f}' if ratio else '-'):>15}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
