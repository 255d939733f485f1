"""``verl-credit smoke``: real verl PPO steps of a tiny model on the CPU, with a verl_credit estimator.

    verl-credit smoke [--estimator NAME] [--import MODULE] [--steps N] [--dp N] [--set KEY=VALUE ...]

What runs is verl's own ``main_ppo`` (through ``python -m verl_credit.main_ppo``): Ray, the V1
trainer, ``ActorRolloutRefWorker`` with the FSDP2 engine on gloo, TransferQueue, the agent loop
and the reward loop, with :mod:`verl_credit.cpu` supplying the CPU platform and the ``hf_cpu``
rollout. The model is a random tiny Qwen2 with a BPE trained on the fly; the data are synthetic
addition problems; the reward is :mod:`verl_credit.cpu.smoke_reward` (mixed outcomes by design).
Each step's ``credit/`` metrics are printed. It checks that an estimator works inside verl before
a GPU run; it does not train anything useful.

    build_workspace(root, solutions="short") -> Workspace   model + tokenizer + train/val parquet under root
    smoke_overrides(ws, estimator, steps, dp, ...) -> list[str]   the hydra overrides of the run
    run(ws, overrides, ...) -> SmokeResult       launch, wait (bounded), read the metrics
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from verl_credit.cpu import cpu_env

__all__ = [
    "Workspace",
    "SmokeResult",
    "build_workspace",
    "smoke_overrides",
    "run",
    "step_summary",
    "add_arguments",
    "main",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
CORPUS = [
    "Tom has 3 apples and buys 4 more. 3 + 4 = 7. So he has 7 apples.\n#### 7",
    "A box holds 12 pens. Two boxes hold 12 * 2 = 24 pens. The final answer is 24.",
    "First compute 5 * 6 = 30. Then subtract 8 to get 22. \\boxed{22}",
    "She walks 2 km a day for 5 days, so 2 * 5 = 10 km in total.\n#### 10",
] * 10


def _long_corpus(seed: int = 0) -> list[str]:
    """Multi-step solutions with 3-5 spans each (~70 tokens with the smoke BPE), ten number choices
    per template so that sampled solutions differ in length (the parity reward then mixes groups)."""
    import random

    rng, lines = random.Random(seed), []
    for _ in range(10):
        a, b = rng.randint(2, 30), rng.randint(2, 12)
        lines += [
            f"Tom has {a} apples and buys {b} more apples. He puts all the apples together. {a} + {b} = {a + b}. "
            f"So he has {a + b} apples now.\n#### {a + b}",
            f"A box holds {a} pens and there are {b} boxes. Each box has the same number of pens. "
            f"{a} * {b} = {a * b}. The final answer is {a * b}.",
            f"First we compute the price of the toys. {a} * {b} = {a * b}. Then we subtract the {b} dollars. "
            f"{a * b} - {b} = {a * b - b}. \\boxed{{{a * b - b}}}",
            f"She walks {b} km a day for {a} days in a row. Every day the walk is the same. {b} * {a} = {a * b}. "
            f"So she walks {a * b} km.\n#### {a * b}",
        ]
    return lines


# the "long" workspace: what a counterfactual stage with several spans per rollout sees; learnt with
# 1500 imitation steps (~11 s), asked with a longer instruction and sampled with 100-token responses
LONG_CORPUS = _long_corpus()
LONG_INSTRUCTION = " Show each step of the work, then write the final answer after ####."
# name: (corpus, imitation steps, prompt length, response length of a run)
SOLUTIONS = {"short": (CORPUS, 400, 64, 24), "long": (LONG_CORPUS, 1500, 128, 100)}


# every credit feature at once over ktae (the real-step tests' and the benchmark's "combined" run)
COMBINED_FEATURES = (
    "credit.token_weighting=counterfactual",
    "credit.length_reward.enabled=true",
    "credit.length_reward.scorer=counterfactual",
    "credit.batching.query_preserved=true",
    "credit.batching.reward_balanced.enabled=true",
    "credit.diagnostics.token_flip_every=1",
)


@dataclasses.dataclass(frozen=True)
class Workspace:
    root: Path
    model: Path
    train: Path
    val: Path


@dataclasses.dataclass
class SmokeResult:
    returncode: int
    wall_s: float
    steps: list[dict]  # one dict of metrics per logged step
    log_tail: str


def build_workspace(root: str | Path, num_problems: int = 16, seed: int = 0, solutions: str = "short") -> Workspace:
    """Tiny Qwen2 (with a chat template) and synthetic addition problems, under ``root``.

    ``solutions``: the style the model imitates, "short" (``CORPUS``: 1-3 spans, about a third of
    40-token samples end in an answer) or "long" (``LONG_CORPUS`` and ``LONG_INSTRUCTION``: 3-5
    spans, about two thirds of 100-token samples end in an answer)."""
    if solutions not in SOLUTIONS:
        raise ValueError(f"solutions must be one of {sorted(SOLUTIONS)}, got {solutions!r}")
    corpus, steps, _, _ = SOLUTIONS[solutions]
    import random

    from transformers import AutoTokenizer

    from verl_credit.data import verl_record, write_parquet
    from verl_credit.testing import build_tiny_qwen2

    root = Path(root)
    suffix = "" if solutions == "short" else f"_{solutions}"  # one workdir can hold both workspaces
    model, data = root / f"model{suffix}", root / f"data{suffix}"
    rng = random.Random(seed)
    questions, records = [], []
    for i in range(num_problems):
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        questions.append(f"Tom has {a} apples and buys {b} more. How many apples does he have?")
        if solutions == "long":
            questions[-1] += LONG_INSTRUCTION
        records.append(
            verl_record(questions[-1], str(a + b), data_source="smoke/add", split="train", index=i, instruction="")
        )
    if not (model / "config.json").exists():
        build_tiny_qwen2(model, corpus, vocab_size=300, hidden=64, heads=4, seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(model)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(model)
        _imitate_corpus(model, tokenizer, questions, seed, corpus, steps)
    train = write_parquet(records, data / "train.parquet")
    val = write_parquet(records[:4], data / "val.parquet")
    return Workspace(root=root, model=model, train=train, val=val)


def _imitate_corpus(
    model_dir: Path, tokenizer, questions: list[str], seed: int, corpus: list[str] = CORPUS, steps: int = 400
) -> None:
    """A few seconds of next-token training on chat-formatted ``corpus`` answers to ``questions``, so
    sampled responses have sentences, arithmetic and answer markers (spans and answers for the
    counterfactual stage) rather than uniform noise: at temperature 1 about a third of 40-token
    samples end in an answer."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        + answer
        + tokenizer.eos_token
        for q in questions
        for answer in dict.fromkeys(corpus)
    ]
    encoded = [torch.tensor([tokenizer(t)["input_ids"]]) for t in texts]
    order = torch.randint(len(encoded), (steps,), generator=torch.Generator().manual_seed(seed))
    optim = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for i in order.tolist():
        model(input_ids=encoded[i], labels=encoded[i]).loss.backward()
        optim.step()
        optim.zero_grad()
    model.save_pretrained(model_dir)


def smoke_overrides(
    ws: Workspace,
    estimator: str = "ktae",
    steps: int = 2,
    dp: int = 1,
    prompts: int = 4,
    n: int = 4,
    response_length: int = 24,
    prompt_length: int = 64,
    dynamic_bsz: bool = True,
    remove_padding: bool = False,
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """Hydra overrides of a CPU run (``python -m verl_credit.main_ppo``): verl's defaults except the
    sizes, the CPU pieces (``hf_cpu`` rollout, fsdp2, sdpa, logical Ray GPUs, one TQ storage unit)
    and the smoke reward. ``extra`` comes last and wins."""
    rows = prompts * n
    tokens = 2 * (prompt_length + response_length) * max(1, rows // dp)
    return [
        f"algorithm.adv_estimator={estimator}",
        "algorithm.use_kl_in_reward=false",
        f"data.train_files={ws.train}",
        f"data.val_files={ws.val}",
        f"data.train_batch_size={prompts}",
        f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={response_length}",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={ws.model}",
        f"actor_rollout_ref.model.use_remove_padding={str(remove_padding).lower()}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.actor.strategy=fsdp2",
        # fp32 compute: verl's default bf16 autocast is slow on CPUs and blurs the comparisons a check makes
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts}",
        f"actor_rollout_ref.actor.use_dynamic_bsz={str(dynamic_bsz).lower()}",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={tokens}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={n}",
        "actor_rollout_ref.actor.use_kl_loss=false",
        "actor_rollout_ref.actor.entropy_coeff=0",
        "actor_rollout_ref.actor.shuffle=false",
        "actor_rollout_ref.rollout.name=hf_cpu",
        f"actor_rollout_ref.rollout.n={n}",
        "actor_rollout_ref.rollout.temperature=1.0",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={n}",
        f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={tokens}",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        "actor_rollout_ref.rollout.agent.num_workers=1",  # verl's 8 agent-loop and 8 reward processes
        "reward.num_workers=1",  # would each import verl on a 2-core machine
        "reward.custom_reward_function.path=pkg://verl_credit.cpu.smoke_reward",
        "reward.custom_reward_function.name=compute_score",
        f"trainer.n_gpus_per_node={dp}",
        "trainer.nnodes=1",
        "trainer.device=cpu",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.logger=[console,file]",
        "trainer.project_name=verl_credit_smoke",
        f"trainer.experiment_name={estimator}",
        f"trainer.default_local_dir={ws.root / 'checkpoints'}",
        # logical CPUs for Ray's bookkeeping (TaskRunner, TQ controller and storage, agent-loop and
        # reward workers each reserve one); the processes share the real cores regardless
        f"ray_kwargs.ray_init.num_cpus={8 + 2 * dp}",
        f"+ray_kwargs.ray_init.num_gpus={dp}",
        "+ray_kwargs.ray_init.include_dashboard=false",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        *extra,
    ]


def run(
    ws: Workspace,
    overrides: list[str],
    timeout_s: float = 600,
    imports: tuple[str, ...] = (),
    dump_dir: str | Path | None = None,
    echo: bool = False,
) -> SmokeResult:
    """Run verl's ``main_ppo`` (via ``verl_credit.main_ppo``) in a fresh process on the CPU platform.

    ``imports``: modules every process imports (user estimators), through ``VERL_USE_EXTERNAL_MODULES``
    and ``credit.import_modules``. ``dump_dir``: the advantage step writes what verl trains on there
    (``VERL_CREDIT_DUMP_DIR``, see :mod:`verl_credit.integration.dump`). Bounded by ``timeout_s``.
    """
    metrics_path = ws.root / f"metrics-{os.getpid()}-{time.monotonic_ns()}.jsonl"
    env = {**os.environ, **cpu_env(), "VERL_FILE_LOGGER_PATH": str(metrics_path), "TQ_NUM_THREADS": "1"}
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.pop("RAY_ADDRESS", None)
    if imports:
        env["VERL_USE_EXTERNAL_MODULES"] = ",".join([env["VERL_USE_EXTERNAL_MODULES"], *imports])
        overrides = [*overrides, f"credit.import_modules=[{','.join(imports)}]"]
    if dump_dir is not None:
        env["VERL_CREDIT_DUMP_DIR"] = str(dump_dir)
    cmd = [sys.executable, "-m", "verl_credit.main_ppo", *overrides]
    start = time.perf_counter()
    log_path = ws.root / "smoke.log"
    with open(log_path, "w") as log:
        # its own session, so a timeout ends Ray's processes too, not only the driver
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        watchdog = threading.Timer(timeout_s, _kill_session, args=(proc, log))
        watchdog.start()
        try:
            for line in proc.stdout:
                log.write(line)
                if echo:
                    print(line, end="", flush=True)
            proc.wait()
        finally:
            watchdog.cancel()
            _kill_session(proc, None)  # Ray leaves raylet/workers behind when the driver dies
    wall = time.perf_counter() - start
    steps = []
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                steps.append({"step": record.get("step"), **record.get("data", {})})
    tail = log_path.read_text()[-6000:]
    return SmokeResult(
        returncode=proc.returncode if proc.returncode is not None else -9, wall_s=wall, steps=steps, log_tail=tail
    )


def _kill_session(proc: subprocess.Popen, log) -> None:
    """Stop the run's whole process session (driver, raylet, Ray workers)."""
    import signal

    alive = proc.poll() is None
    if log is not None and alive:
        log.write("\n[verl-credit smoke] timed out: killing the run\n")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if sig == signal.SIGTERM:
            time.sleep(2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--estimator", default="ktae", help="algorithm.adv_estimator (a verl_credit or verl name)")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="module that registers a user estimator (imported in every process); repeatable",
    )
    parser.add_argument("--steps", type=int, default=2, help="PPO steps (>= 1)")
    parser.add_argument("--dp", type=int, default=1, help="data-parallel actor workers (processes)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra hydra override, e.g. --set credit.token_weighting=counterfactual; repeatable",
    )
    parser.add_argument(
        "--solutions",
        choices=sorted(SOLUTIONS),
        default="short",
        help="the style the tiny model imitates: short (1-3 spans, 24-token responses) or long (3-4 spans, "
        "100-token responses: several spans per rollout for the counterfactual stage)",
    )
    parser.add_argument("--workdir", default="outputs/smoke", help="model, data, log and metrics go here")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before the run is killed")
    parser.add_argument("--dump", default=None, metavar="DIR", help="write each step's batch and advantages here")
    parser.add_argument("--quiet", action="store_true", help="do not echo verl's log")


def step_summary(logged: list, total: int, returncode: int) -> tuple[bool, str]:
    """Did the run do its steps? A run resumed from a checkpoint at step k logs steps k+1..total
    (verl counts from the checkpoint), so the steps expected are those from the first logged one
    to ``total``, contiguous. Returns (ok, "6 of 6 steps" or "steps 4-6 of 6 (resumed from step 3)")."""
    steps = [int(s) for s in logged if s is not None]
    if not steps:
        return False, f"0 of {total} steps"
    first = steps[0]
    expected = list(range(first, total + 1))
    ok = returncode == 0 and steps == expected
    if first == 1:
        return ok, f"{len(steps)} of {total} steps"
    return ok, f"steps {first}-{steps[-1]} of {total} (resumed from step {first - 1}; {len(steps)} run)"


def main(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.dp < 1:
        print("verl-credit smoke: error: --steps and --dp must be >= 1", file=sys.stderr)
        return 2
    ws = build_workspace(args.workdir, solutions=args.solutions)
    _, _, prompt, response = SOLUTIONS[args.solutions]
    overrides = smoke_overrides(
        ws, args.estimator, args.steps, args.dp, response_length=response, prompt_length=prompt, extra=args.overrides
    )
    result = run(ws, overrides, args.timeout, tuple(args.imports), args.dump, echo=not args.quiet)
    for record in result.steps:
        credit = {k: v for k, v in sorted(record.items()) if k.startswith("credit/")}
        timing = record.get("timing_s/step")
        print(f"[smoke] step {record['step']}: step time {timing:.1f}s" if timing else f"[smoke] step {record['step']}")
        for key, value in credit.items():
            print(f"    {key} = {value:.6g}" if isinstance(value, float) else f"    {key} = {value}")
    ok, summary = step_summary([record.get("step") for record in result.steps], args.steps, result.returncode)
    print(
        f"[smoke] {'OK' if ok else 'FAILED'}: {summary} in {result.wall_s:.0f}s "
        f"(estimator {args.estimator}, dp {args.dp}); log: {ws.root / 'smoke.log'}"
    )
    if not ok and args.quiet:
        print(result.log_tail, file=sys.stderr)
    return 0 if ok else 1
