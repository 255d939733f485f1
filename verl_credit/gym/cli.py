"""``verl-credit gym``: arguments and the run from warm start to report.

    add_arguments(parser)   -- the subcommand's options (used by ``verl_credit.cli``).
    check_args(args)        -- ``--import``, ``--estimators`` and every knob checked before any model is
                               built (a one-line UsageError naming the option otherwise).
    learn_config(args)      -- the LearnConfig the options give.
    task_config(args), model_config(args) -- the TaskConfig / ModelConfig the options give.
    run(args) -> dict       -- warm start (cached), credit precision, learning, report.

Randomness: every sample, split and control is seeded from ``--seed`` and the run seed; what is
left is thread scheduling in torch's CPU kernels (float sums in a different order can change a
sampled token in rare cases); the default ``--threads 1`` removes it and, for this tiny model, is
also the fastest (two threads were ~10x slower on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from verl_credit.cli_args import UsageError, add_import_argument, import_modules, name_list, positive_int, usage_exit
from verl_credit.gym.defaults import DEFAULT_VARIANT

__all__ = ["add_arguments", "check_args", "learn_config", "task_config", "model_config", "run", "DEFAULT_METHODS"]

# the bounds, every built-in estimator with the counterfactual controls, and the peers a verl user would try
# (batching options, +qp and +rb, are off the default list: they do not change token credit)
DEFAULT_METHODS = (
    "grpo",
    "oracle",
    "anti_oracle",
    "ktae",
    "counterfactual",
    "counterfactual:uniform",
    "counterfactual:random",
    "counterfactual:inverted",
    "variance_weighted",
    "entropy80",
    "counterfactual+entropy80",
    "clip_cov",
    "kl_cov",
    "rloo",
    "optimal_token_baseline",
)


HELD_OUT, HELD_OUT_QUICK = 128, 32
QUICK_SFT_STEPS = 400


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smoke test: tiny SFT, few steps, 1 seed (~1 min)")
    p.add_argument("--out", default="gym_out", help="output folder (the warm-started model is cached there)")
    p.add_argument(
        "--estimators",
        nargs="+",
        action="extend",
        default=None,
        metavar="METHOD",
        help="separated by spaces or commas; name[:mode][+option]...: grpo or a registered estimator "
        "(counterfactual modes counterfactual|uniform|random|inverted); ground-truth bounds (read the task's "
        "labels) oracle[:variant], anti_oracle[:variant], variant = ':'-separated items mean1 (weights rescaled "
        "to mean 1 per rollout) | mask (0/1, no rescale) | floorF (non-target tokens weight F) | fmtF (format/eos "
        "tokens at least F, default 0.2) | clipC (mean-1 weights clipped at C, renormalised) | persign (mean 1 "
        f"per sign of z over the batch), plain = {DEFAULT_VARIANT}; peers: rloo and optimal_token_baseline "
        "(verl's estimators), entropy80[:q[:all|kept]] (= grpo+entropy80), clip_cov[:ratio], kl_cov[:ratio] "
        "(= grpo with verl's loss). Options: +qp query-preserved, +rb reward-balanced batching; +lr[:first_seen|"
        "group] the length reward (Bingo) before the estimator; +entropy80[:q[:all|kept]] the high-entropy "
        "token filter after the estimator (q 0.2); +clip_cov[:ratio] / +kl_cov[:ratio] verl's Clip-Cov / "
        "KL-Cov policy loss; +m1 the token weights rescaled to mean 1 per rollout (token weightings only) "
        f"(default: {' '.join(DEFAULT_METHODS)})",
    )
    add_import_argument(p, "modules to import first (your estimators), separated by spaces or commas")
    p.add_argument("--seeds", type=positive_int, default=None, help="RL seeds per method (default 5, quick 1)")
    p.add_argument("--steps", type=positive_int, default=None, help="RL steps per run (default 60, quick 2)")
    from verl_credit.gym.defaults import LearnConfig
    from verl_credit.gym.model import ModelConfig
    from verl_credit.gym.task import TaskConfig

    t, m, lc = TaskConfig(), ModelConfig(), LearnConfig()
    g = p.add_argument_group("task, model and optimiser knobs (recorded in results.json settings)")
    g.add_argument("--filler-rate", type=float, default=None, metavar="P", help=f"filler line rate ({t.filler_rate})")
    g.add_argument("--side-rate", type=float, default=None, metavar="P", help=f"side step rate ({t.side_rate})")
    g.add_argument("--error-rate", type=float, default=None, metavar="P", help=f"demo error rate ({t.error_rate})")
    g.add_argument("--min-steps", type=int, default=None, metavar="N", help=f"fewest ops per problem ({t.min_steps})")
    g.add_argument("--max-steps", type=int, default=None, metavar="N", help=f"most ops per problem ({t.max_steps})")
    g.add_argument("--group-size", type=int, default=None, metavar="G", help=f"samples per prompt ({lc.group_size})")
    g.add_argument(
        "--prompts-per-step", type=int, default=None, metavar="N", help=f"prompts per RL step ({lc.prompts_per_step})"
    )
    g.add_argument("--lr", type=float, default=None, help=f"RL learning rate ({lc.lr:g})")
    g.add_argument(
        "--eval-samples", type=int, default=None, metavar="K", help=f"samples per held-out problem ({lc.eval_samples})"
    )
    g.add_argument(
        "--eval-every", type=int, default=None, metavar="N", help=f"steps between evaluations ({lc.eval_every})"
    )
    g.add_argument(
        "--held-out",
        type=int,
        default=None,
        metavar="N",
        help=f"held-out problems ({HELD_OUT}, quick {HELD_OUT_QUICK})",
    )
    g.add_argument(
        "--model-width", type=int, default=None, metavar="H", help=f"hidden size of the tiny Qwen2 ({m.hidden})"
    )
    g.add_argument(
        "--sft-steps",
        type=int,
        default=None,
        metavar="N",
        help=f"warm-start SFT steps ({m.sft_steps}, quick {QUICK_SFT_STEPS})",
    )
    p.add_argument(
        "--train-prompts",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on a fixed set of N prompts visited in shuffled epochs (prompts recur, as in verl; "
        "N >= 8, the prompts per step) instead of a fresh prompt every time (default)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the task, the warm start and the credit sample")
    p.add_argument("--target-gain", type=float, default=0.1, help="target = starting accuracy + this")
    p.add_argument("--skip-learning", action="store_true", help="measurement 1 only")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest here, deterministic)")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="learning runs in parallel processes (default 2; one per core, each with --threads threads: the "
        "results are the same as with 1, each run seeds itself)",
    )
    p.set_defaults(gym_prog=p.prog)


# option -> (check, what it must be); None values mean "the default" and are not checked
_KNOBS = {
    "filler_rate": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "side_rate": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "error_rate": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "min_steps": (lambda v: 1 <= v <= 12, "an integer in [1, 12]"),
    "max_steps": (lambda v: 1 <= v <= 12, "an integer in [1, 12]"),
    "group_size": (lambda v: v >= 2, "an integer >= 2 (GRPO needs two samples per prompt)"),
    "prompts_per_step": (lambda v: v >= 2, "an integer >= 2 (two mini-batches per step)"),
    "lr": (lambda v: 0.0 < v < 1.0, "a number in (0, 1)"),
    "eval_samples": (lambda v: v >= 1, "an integer >= 1"),
    "eval_every": (lambda v: v >= 1, "an integer >= 1"),
    "held_out": (lambda v: v >= 1, "an integer >= 1"),
    "model_width": (lambda v: v >= 8 and v % 4 == 0, "a multiple of 4, >= 8 (two heads, even head size)"),
    "sft_steps": (lambda v: v >= 1, "an integer >= 1"),
}


def _knob(args, name):
    return getattr(args, name, None)


def check_knobs(args) -> None:
    """Every knob in range (UsageError ``--<option> must be ..., got ...`` otherwise)."""
    import math

    for name, (ok, what) in _KNOBS.items():
        value = _knob(args, name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise UsageError(f"--{name.replace('_', '-')} must be {what}, got {value!r}")
    from verl_credit.gym.task import TaskConfig

    lo, hi = _knob(args, "min_steps"), _knob(args, "max_steps")
    lo, hi = TaskConfig.min_steps if lo is None else lo, TaskConfig.max_steps if hi is None else hi
    if lo > hi:
        raise UsageError(f"--min-steps ({lo}) must be <= --max-steps ({hi})")


def task_config(args):
    """The TaskConfig of ``args`` (defaults for the options not given)."""
    from verl_credit.gym.task import TaskConfig

    names = ("filler_rate", "side_rate", "error_rate", "min_steps", "max_steps")
    extra = {n: _knob(args, n) for n in names if _knob(args, n) is not None}
    try:
        return TaskConfig(**extra)
    except ValueError as err:
        raise UsageError(str(err)) from None


def model_config(args):
    """The ModelConfig of ``args``: ``--quick`` trains a shorter warm start; ``--model-width`` and
    ``--sft-steps`` override."""
    from verl_credit.gym.model import ModelConfig

    extra = {"sft_examples": 1500, "sft_steps": QUICK_SFT_STEPS} if args.quick else {}
    if _knob(args, "model_width") is not None:
        extra["hidden"] = args.model_width
    if _knob(args, "sft_steps") is not None:
        extra["sft_steps"] = args.sft_steps
    return ModelConfig(**extra)


def check_args(args) -> list:
    """``--import``, ``--estimators`` (parsed methods), ``--steps``, ``--seeds``, ``--train-prompts`` and
    the knobs, checked before any model is built;
    UsageError naming the option otherwise."""
    from verl_credit.gym.rollout import parse_method

    import_modules(name_list(args.imports))
    names = name_list(args.estimators) if args.estimators is not None else list(DEFAULT_METHODS)
    if not names:
        raise UsageError("--estimators names no method")
    methods = []
    for name in names:
        try:
            methods.append(parse_method(name))
        except KeyError as err:  # get_estimator's message, without KeyError's quotes
            raise UsageError(f"--estimators {name}: {err.args[0]}") from None
        except ValueError as err:
            raise UsageError(f"--estimators {name}: {str(err).split(': ', 1)[-1]}") from None
    for name in ("steps", "seeds"):
        value = getattr(args, name, None)
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise UsageError(f"--{name} must be an integer >= 1, got {value!r}")
    check_knobs(args)
    learn_config(args)
    return methods


def learn_config(args):
    """The LearnConfig of ``args`` (``--quick``, ``--steps``, ``--train-prompts``); UsageError naming
    the option when it is out of range."""
    from verl_credit.gym.defaults import LearnConfig

    extra = {"steps": 2, "eval_every": 2, "eval_samples": 2} if args.quick else {}
    if args.steps:
        extra["steps"] = args.steps
    for name in ("train_prompts", "group_size", "prompts_per_step", "lr", "eval_samples", "eval_every"):
        if _knob(args, name) is not None:
            extra[name] = _knob(args, name)
    try:
        return LearnConfig(**extra)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _init_worker(threads: int, imports: list[str]) -> None:
    """A learning worker process: torch threads and the user's ``--import`` modules (their estimators)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import_modules(imports)


def _train(job):
    from verl_credit.gym.learn import train_one

    return train_one(*job)


def _run_jobs(jobs: list, workers: int, threads: int, imports: list[str]) -> list[dict]:
    """``train_one(*job)`` for every job, in order: in this process, or in ``workers`` spawned processes."""
    if workers <= 1 or len(jobs) <= 1:
        return [_train(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), ctx, _init_worker, (threads, imports)) as pool:
        return list(pool.map(_train, jobs))


def run(args) -> dict:
    """Everything; returns the result dict also written to ``<out>/results.json``. A user error in
    the arguments (:func:`check_args`) prints ``verl-credit gym: error: ...`` and exits with status 2."""
    # imported here, not at module level: `verl-credit doctor` builds this parser and must not import verl
    import torch

    from verl_credit.config import CreditConfig
    from verl_credit.gym.credit import credit_precision
    from verl_credit.gym.endpoints import endpoints, validity_line
    from verl_credit.gym.learn import summarize
    from verl_credit.gym.model import load_policy, warm_start
    from verl_credit.gym.report import noise_lines, write_report
    from verl_credit.gym.rollout import parse_method, sample
    from verl_credit.gym.task import make_problems

    try:
        methods = check_args(args)
    except UsageError as err:
        usage_exit(getattr(args, "gym_prog", "verl-credit gym"), err)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    task_cfg, model_cfg, learn_cfg = task_config(args), model_config(args), learn_config(args)
    if args.quick:
        credit_prompts, n_boot, held_n, seeds = 16, 200, HELD_OUT_QUICK, args.seeds or 1
    else:
        credit_prompts, n_boot, held_n, seeds = 96, 1000, HELD_OUT, args.seeds or 5
    held_n = args.held_out or held_n
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"gym: warm start (cached in {out / 'model'})")
    path, ws = warm_start(out, task_cfg, model_cfg, seed=args.seed)
    print(f"gym: warm-start greedy pass rate {ws['pass_rate']:.3f}{' (cached)' if ws['cached'] else ''}")
    config = CreditConfig()

    # measurement 1: every method once
    t1 = time.perf_counter()
    model, tokenizer = load_policy(path)
    rollouts = sample(
        model,
        tokenizer,
        make_problems(credit_prompts, seed=args.seed + 5, config=task_cfg),
        learn_cfg.group_size,
        learn_cfg.max_new_tokens,
        seed=args.seed,
    )
    # measurement 1 scores what changes token credit: the label without +qp/+rb/+lr and the loss modes
    credit_methods = list({m.credit_label: parse_method(m.credit_label) for m in methods}.values())
    credit_rows = credit_precision(credit_methods, rollouts, model, tokenizer, config, n_boot=n_boot, seed=args.seed)
    credit_seconds = time.perf_counter() - t1
    for row in credit_rows:
        print(f"  {row['signal']:<32} AUC {row['auc']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]")

    # measurement 2: RL from the warm start (the uniform control is the GRPO run: weights are exactly 1)
    runs, learning, target, start_acc, ends = [], [], float("nan"), float("nan"), None
    t2 = time.perf_counter()
    if not args.skip_learning:
        held_out = make_problems(held_n, seed=args.seed + 3, config=task_cfg)
        learn_methods = [m for m in methods if not (m.estimator == "counterfactual" and m.cf_mode == "uniform")]
        jobs = [(m, s, path, held_out, learn_cfg, config, task_cfg) for m in learn_methods for s in range(seeds)]
        runs = _run_jobs(jobs, args.workers, args.threads, name_list(args.imports))
        start_acc = runs[0]["curve"][0][1] if runs else float("nan")
        target = start_acc + args.target_gain
        learning = summarize(runs, target)
        ends = endpoints(runs, held_n, learn_cfg.eval_samples)
        for row in learning:
            row.update(ends["methods"][row["method"]])
    result = {
        "warm_start": {k: v for k, v in ws.items() if k != "key"},
        "credit": credit_rows,
        "learning": learning,
        "validity": ends["validity"] if ends else None,
        "noise": ends["noise"] if ends else None,
        "runs": runs,
        "start_acc": start_acc,
        "target": target,
        "target_gain": args.target_gain,
        "settings": {
            "quick": bool(args.quick),
            "seed": args.seed,
            "seeds": seeds,
            "methods": [m.label for m in methods],
            "credit_prompts": credit_prompts,
            "group_size": learn_cfg.group_size,
            "held_out": held_n,
            "oracle_default_variant": DEFAULT_VARIANT,
            "task": dataclasses.asdict(task_cfg),
            "model": dataclasses.asdict(model_cfg),
            "learn": dataclasses.asdict(learn_cfg),
            "threads": torch.get_num_threads(),
            "workers": args.workers,
        },
        "seconds_credit": credit_seconds,
        "seconds_learning": time.perf_counter() - t2,
    }
    result["seconds"] = time.perf_counter() - start
    paths = write_report(out, result)
    print(f"gym: wrote {', '.join(str(p) for p in paths)} in {result['seconds']:.0f} s")
    if ends:
        print(validity_line(ends["validity"]))
        if ends["noise"]:
            print("\n".join(noise_lines(ends["noise"])))
    return result
