"""Measurement 2, learning: a small PPO loop from the warm start, one run per (method, seed).

Public API:
    LearnConfig                                 -- budget and optimiser settings.
    train_one(method, seed, path, held_out, cfg, config, log) -> dict  (curve, final accuracy, seconds)
    summarize(runs, target) -> list[dict]       -- per method: mean curve, final accuracy with a 95%
                                                   t-interval over seeds, steps to reach ``target``.

One step (B = prompts_per_step x group_size rollouts):
    1. sample G responses per prompt (temperature 1, ``max_new_tokens``), grade them (0/1);
       reward-balanced (``+rb``): sample twice the prompts and keep ``prompts_per_step`` groups
       chosen by ``core.reward_buffer.select_balanced_groups`` (positive share within [rho, 1 - rho]);
    2. old log-probs (no grad); advantages with ``rollout.estimate`` (the integration's path);
    3. ``ppo_epochs`` passes over ``mini_batches`` mini-batches: rows shuffled, or whole groups per
       mini-batch (query-preserved, ``+qp``); loss = verl's ``get_policy_loss_fn("vanilla")``
       (clipped PPO, dual clip; it aggregates with verl's ``agg_loss``, "token-mean"), AdamW,
       gradient norm clipped at 1;
    4. every ``eval_every`` steps: held-out accuracy = pass@1 at temperature 1 (``eval_samples``
       samples per problem, fixed seed), the quantity RL optimises; greedy accuracy at the end.
The uniform counterfactual control gives weights exactly 1: its run is the GRPO run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn
from verl.workers.config.actor import ActorConfig

from verl_credit.config import CreditConfig
from verl_credit.core.reward_buffer import select_balanced_groups
from verl_credit.gym.model import load_policy, response_logprobs
from verl_credit.gym.rollout import Method, estimate, evaluate, evaluate_sampled, sample
from verl_credit.gym.task import TaskConfig, make_problems

__all__ = ["LearnConfig", "train_one", "summarize"]


@dataclass(frozen=True)
class LearnConfig:
    """Attributes:
    steps: RL steps per run. prompts_per_step, group_size: B = their product. max_new_tokens: 48.
    lr: AdamW learning rate (1e-4; 1e-3 and 3e-4 collapsed GRPO on this model). ppo_epochs (1),
    mini_batches (2), clip_ratio (0.2). eval_every: steps between held-out evaluations (10);
    eval_samples: samples per held-out problem (4). rho: reward-balanced share (0.25).
    """

    steps: int = 60
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 48
    lr: float = 1e-4
    ppo_epochs: int = 1
    mini_batches: int = 2
    clip_ratio: float = 0.2
    eval_every: int = 10
    eval_samples: int = 4
    rho: float = 0.25


def _minibatches(uids: list[str], n: int, query_preserved: bool, gen: torch.Generator) -> list[torch.Tensor]:
    """Row indices of ``n`` mini-batches: a random split of rows, or of whole groups (query-preserved)."""
    B = len(uids)
    if not query_preserved:
        return list(torch.randperm(B, generator=gen).chunk(n))
    names = list(dict.fromkeys(uids))
    order = torch.randperm(len(names), generator=gen).tolist()
    group_of = {u: k for k, u in enumerate(names)}
    rows = torch.tensor([group_of[u] for u in uids])
    parts = torch.tensor(order).chunk(n)
    return [torch.isin(rows, p).nonzero().flatten() for p in parts]


def train_one(
    method: Method, seed: int, path, held_out, cfg: LearnConfig, config: CreditConfig, task_cfg: TaskConfig, log=print
):
    """One RL run from the warm start -> {"method", "seed", "curve": [(step, acc)], "final", "seconds", ...}."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model, tokenizer = load_policy(path)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    actor_cfg = ActorConfig(
        strategy="fsdp",
        ppo_mini_batch_size=max(1, cfg.prompts_per_step // cfg.mini_batches),
        ppo_micro_batch_size_per_gpu=cfg.prompts_per_step * cfg.group_size,
        rollout_n=cfg.group_size,
        clip_ratio=cfg.clip_ratio,
    )
    loss_fn = get_policy_loss_fn("vanilla")
    per_step = cfg.prompts_per_step * (2 if method.reward_balanced else 1)
    stream = make_problems(cfg.steps * per_step, seed=10_000 + seed, config=task_cfg)
    gen = torch.Generator().manual_seed(seed)

    def accuracy():
        return evaluate_sampled(model, tokenizer, held_out, cfg.eval_samples, cfg.max_new_tokens, seed=12_345)

    curve = [(0, accuracy())]
    history: dict[str, list[float]] = {"reward/mean": [], "pg_clipfrac/mean": [], "balanced/fraction": []}
    for step in range(cfg.steps):
        problems = stream[step * per_step : (step + 1) * per_step]
        r = sample(
            model, tokenizer, problems, cfg.group_size, cfg.max_new_tokens, seed=seed * 100_003 + step, labels=False
        )
        if method.reward_balanced:
            pos = r.rewards.view(per_step, cfg.group_size).sum(1).long().tolist()
            chosen, _, ok = select_balanced_groups(
                pos, [cfg.group_size] * per_step, [0] * per_step, cfg.prompts_per_step, cfg.rho
            )
            rows = torch.cat([torch.arange(g * cfg.group_size, (g + 1) * cfg.group_size) for g in sorted(chosen)])
            r = r.select(rows)
            history["balanced/fraction"].append(float(ok))
        history["reward/mean"].append(float(r.rewards.mean()))
        with torch.no_grad():
            old = response_logprobs(model, r.prompt_ids, r.prompt_mask, r.responses, r.response_mask)
        adv = estimate(method, r, model, tokenizer, config, step, old_log_probs=old).advantages.detach()
        mask = r.response_mask.float()
        for _ in range(cfg.ppo_epochs):
            for mb in _minibatches(r.uids, cfg.mini_batches, method.query_preserved, gen):
                logp = response_logprobs(
                    model, r.prompt_ids[mb], r.prompt_mask[mb], r.responses[mb], r.response_mask[mb]
                )
                loss, metrics = loss_fn(old[mb], logp, adv[mb], mask[mb], "token-mean", actor_cfg)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                history["pg_clipfrac/mean"].append(float(metrics["actor/pg_clipfrac"]))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            curve.append((step + 1, accuracy()))
            log(f"  {method.label:<26} seed {seed} step {step + 1:3d}  held-out acc {curve[-1][1]:.3f}")
    # verl's agg_loss as a metric aggregator too: token-mean |advantage| of the last batch
    adv_abs = float(agg_loss(adv.abs(), mask, "token-mean"))
    metrics_out = {k: float(np.mean(v)) for k, v in history.items() if v}
    metrics_out["advantage_abs/token_mean"] = adv_abs
    return {
        "method": method.label,
        "seed": seed,
        "curve": curve,
        "final": curve[-1][1],
        "final_greedy": evaluate(model, tokenizer, held_out, cfg.max_new_tokens),
        "seconds": time.perf_counter() - start,
        "metrics": metrics_out,
    }


def summarize(runs: list[dict], target: float) -> list[dict]:
    """Per method (in first-seen order): mean curve over seeds, final accuracy mean and 95% t-interval,
    steps to reach ``target`` (median over seeds of the first evaluated step with acc >= target;
    None when fewer than half of the seeds reach it), and the seconds per run."""
    from scipy import stats

    out = []
    for name in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == name]
        finals = np.array([r["final"] for r in rs])
        mean = float(finals.mean())
        if len(finals) > 1:
            half = float(stats.t.ppf(0.975, len(finals) - 1) * finals.std(ddof=1) / np.sqrt(len(finals)))
        else:
            half = float("nan")
        reach = [next((s for s, a in r["curve"] if a >= target), None) for r in rs]
        hit = sorted(s for s in reach if s is not None)
        steps_to_target = float(np.median(hit)) if len(hit) * 2 >= len(rs) and hit else None
        curves = np.array([[a for _, a in r["curve"]] for r in rs])
        out.append(
            {
                "method": name,
                "seeds": len(rs),
                "final_acc": mean,
                "ci_low": mean - half,
                "ci_high": mean + half,
                "steps_to_target": steps_to_target,
                "seeds_reaching_target": len(hit),
                "curve_steps": [s for s, _ in rs[0]["curve"]],
                "curve_mean": curves.mean(0).tolist(),
                "seconds_per_run": float(np.mean([r["seconds"] for r in rs])),
                "final_greedy_acc": float(np.mean([r["final_greedy"] for r in rs])),
                "reward_mean": float(np.mean([r["metrics"].get("reward/mean", np.nan) for r in rs])),
            }
        )
    return out
