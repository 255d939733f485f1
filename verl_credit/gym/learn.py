"""Measurement 2, learning: a small PPO loop from the warm start, one run per (method, seed).

Public API:
    LearnConfig                                 -- budget and optimiser settings.
    train_stream(cfg, per_step, seed, task_cfg) -> list[Problem]  -- a run's training prompts, in order.
    train_one(method, seed, path, held_out, cfg, config, log) -> dict  (curve, final accuracy, seconds)
    summarize(runs, target) -> list[dict]       -- per method: mean curve with a 95% t-interval over
                                                   seeds at every evaluation, mean length curves, final
                                                   accuracy, steps to reach ``target``.

One step (B = prompts_per_step x group_size rollouts):
    1. sample G responses per prompt (temperature 1, ``max_new_tokens``), grade them (0/1);
       reward-balanced (``+rb``): sample twice the prompts and keep ``prompts_per_step`` groups
       chosen by ``core.reward_buffer.select_balanced_groups`` (positive share within [rho, 1 - rho]);
    2. old log-probs (no grad); length reward (``+lr``, ``gym.length_reward``): the outcome rewards
       shaped as the trainer's ``LengthRewardMixin`` does, before the estimator, with the run's
       lambda_dyn schedule and first-seen anchors kept across steps; advantages with
       ``rollout.estimate`` (the integration's path) on the (shaped) rewards;
    3. ``ppo_epochs`` passes over ``mini_batches`` mini-batches: rows shuffled, or whole groups per
       mini-batch (query-preserved, ``+qp``); loss = verl's ``get_policy_loss_fn("vanilla")``
       (clipped PPO, dual clip; it aggregates with verl's ``agg_loss``, "token-mean"), AdamW,
       gradient norm clipped at 1;
    4. every ``eval_every`` steps: held-out accuracy = pass@1 at temperature 1 (``eval_samples``
       samples per problem, seed ``EVAL_SEED`` + step: the same for every method, new at every step),
       the quantity RL optimises, and the mean response length of those samples (all, and correct
       ones); greedy accuracy and length at the end. ``grpo``'s and ``oracle``'s runs are evaluated a
       second time with other sampling seeds (``eval_replicate``): the evaluation noise.
Training prompts: a fresh stream (every prompt seen once, ``train_prompts=None``) or a fixed set
of ``train_prompts`` problems visited in epochs, each epoch in a new seeded order (verl's
shuffled dataloader), so that prompts recur and the length reward's first-seen anchors are reused.
The uniform counterfactual control gives weights exactly 1: its run is the GRPO run.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch
from verl.trainer.ppo.core_algos import agg_loss

from verl_credit.config import CreditConfig
from verl_credit.core.reward_buffer import select_balanced_groups
from verl_credit.gym.compose import policy_loss
from verl_credit.gym.defaults import LearnConfig
from verl_credit.gym.endpoints import BASE, ORACLE
from verl_credit.gym.length_reward import GymLengthReward
from verl_credit.gym.methods import PEERS
from verl_credit.gym.model import load_policy, response_logprobs, response_stats
from verl_credit.gym.rollout import Method, estimate, evaluate_stats, sample
from verl_credit.gym.task import Problem, TaskConfig, make_problems
from verl_credit.registry import get_estimator

__all__ = ["LearnConfig", "train_stream", "train_one", "summarize"]


# The held-out samples' seed at evaluated step s is EVAL_SEED + s: the same for every method and training
# seed at a step (paired evaluation: every method is scored on the same random draws; measured, this does
# not make the noise cancel in a difference, the policies' samples diverge: docs/gym.md), and a new one at
# every step (so that the errors of the evaluated points are independent and average out in the AUC,
# instead of repeating along the curve).
EVAL_SEED = 12_345
EVAL_SEED_REPLICATE = 54_321  # the second evaluation of REPLICATED methods (measured evaluation noise)
REPLICATED = (BASE, ORACLE)  # evaluated twice with ``eval_replicate``: noise of a level and of a difference


def train_stream(cfg: LearnConfig, per_step: int, seed: int, task_cfg: TaskConfig) -> list[Problem]:
    """The ``cfg.steps * per_step`` training prompts of run ``seed``, in order: a fresh stream, or
    (``cfg.train_prompts``) epochs over a fixed set, each epoch a seeded permutation of it."""
    n = cfg.steps * per_step
    if cfg.train_prompts is None:
        return make_problems(n, seed=10_000 + seed, config=task_cfg)
    pool = make_problems(cfg.train_prompts, seed=10_000 + seed, config=task_cfg)
    gen = torch.Generator().manual_seed(20_000 + seed)
    epochs = -(-n // len(pool))
    order = torch.cat([torch.randperm(len(pool), generator=gen) for _ in range(epochs)])[:n]
    return [pool[i] for i in order.tolist()]


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
    """One RL run from the warm start -> {"method", "seed", "curve": [(step, acc)], "final",
    "curve_length": [(step, mean length, mean length of correct)], "final_greedy",
    "final_greedy_length", "seconds", "metrics", "paired", "curve_replicate"}; ``curve_replicate``
    (grpo and oracle only, with ``cfg.eval_replicate``; else None): the same evaluations with a second
    sampling seed.

    Paired seeds: the training prompts, the sampling seeds and the mini-batch order depend on ``seed``
    only, the evaluation seeds on the evaluated step only, never on the method; ``paired`` holds SHA-1
    digests of the run's training prompts and of its first step's sampled responses (equal for every
    method at a seed, ``+rb`` aside: it draws twice the prompts)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model, tokenizer = load_policy(path)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    loss_fn, actor_cfg = policy_loss(
        method,
        dict(
            strategy="fsdp",
            ppo_mini_batch_size=max(1, cfg.prompts_per_step // cfg.mini_batches),
            ppo_micro_batch_size_per_gpu=cfg.prompts_per_step * cfg.group_size,
            rollout_n=cfg.group_size,
            clip_ratio=cfg.clip_ratio,
        ),
    )
    ref_model = None  # the reference policy (the warm start), only for an estimator declaring ref_log_prob
    if method.estimator not in PEERS and "ref_log_prob" in get_estimator(method.estimator).fields:
        ref_model = load_policy(path)[0]
    per_step = cfg.prompts_per_step * (2 if method.reward_balanced else 1)
    stream = train_stream(cfg, per_step, seed, task_cfg)
    paired = {"prompts": hashlib.sha1("".join(p.prompt for p in stream).encode()).hexdigest()}
    gen = torch.Generator().manual_seed(seed)
    length_reward = GymLengthReward(config, method.length_reward) if method.length_reward else None
    curve, curve_length = [], []

    # grpo's and the oracle's runs are evaluated twice, with two sampling seeds: the spread of their AUCs
    # (and of their difference) is the evaluation noise, measured (``endpoints.eval_sd_auc``,
    # ``endpoints.eval_sd_paired``)
    replicate = [] if cfg.eval_replicate and method.label in REPLICATED else None

    def held_out_stats(eval_seed):
        return evaluate_stats(model, tokenizer, held_out, cfg.eval_samples, cfg.max_new_tokens, seed=eval_seed)

    def evaluate_at(step):
        if replicate is not None:  # first, so that the global RNG state after evaluating is every method's
            replicate.append((step, held_out_stats(EVAL_SEED_REPLICATE + step).accuracy))
        stats = held_out_stats(EVAL_SEED + step)
        curve.append((step, stats.accuracy))
        curve_length.append((step, stats.length, stats.length_correct))

    evaluate_at(0)
    history: dict[str, list[float]] = {
        "reward/mean": [],
        "response_length/mean": [],
        "pg_clipfrac/mean": [],
        "balanced/fraction": [],
    }
    for step in range(cfg.steps):
        problems = stream[step * per_step : (step + 1) * per_step]
        r = sample(
            model, tokenizer, problems, cfg.group_size, cfg.max_new_tokens, seed=seed * 100_003 + step, labels=False
        )
        if step == 0:
            paired["first_rollouts"] = hashlib.sha1(r.responses.numpy().tobytes()).hexdigest()
        if method.reward_balanced:
            pos = r.rewards.view(per_step, cfg.group_size).sum(1).long().tolist()
            chosen, _, ok = select_balanced_groups(
                pos, [cfg.group_size] * per_step, [0] * per_step, cfg.prompts_per_step, cfg.rho
            )
            rows = torch.cat([torch.arange(g * cfg.group_size, (g + 1) * cfg.group_size) for g in sorted(chosen)])
            r = r.select(rows)
            history["balanced/fraction"].append(float(ok))
        history["reward/mean"].append(float(r.rewards.mean()))
        history["response_length/mean"].append(float(r.response_mask.sum(1).double().mean()))
        with torch.no_grad():  # the old-log-prob forward: log-probs, entropy and sum pi^2, as verl's
            stats = response_stats(model, r.prompt_ids, r.prompt_mask, r.responses, r.response_mask)
            old = stats.log_probs
            ref = None
            if ref_model is not None:
                ref = response_logprobs(ref_model, r.prompt_ids, r.prompt_mask, r.responses, r.response_mask)
        if length_reward is not None:  # reward shaping before the estimator, as the trainer does
            r, _, lr_metrics = length_reward.apply(r, old, tokenizer, step + 1)
            for key, value in lr_metrics.items():
                history.setdefault(key, []).append(value)
        adv = estimate(method, r, model, tokenizer, config, step, stats=stats, ref_log_probs=ref).advantages.detach()
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
                if "actor/pg_clipfrac" in metrics:  # verl's kl_cov loss reports no clip fraction
                    history["pg_clipfrac/mean"].append(float(metrics["actor/pg_clipfrac"]))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            evaluate_at(step + 1)
            log(
                f"  {method.label:<26} seed {seed} step {step + 1:3d}  held-out acc {curve[-1][1]:.3f}"
                f"  length {curve_length[-1][1]:.1f}"
            )
    # verl's agg_loss as a metric aggregator too: token-mean |advantage| of the last batch
    adv_abs = float(agg_loss(adv.abs(), mask, "token-mean"))
    metrics_out = {k: float(np.mean(v)) for k, v in history.items() if v}
    metrics_out["advantage_abs/token_mean"] = adv_abs
    greedy = evaluate_stats(model, tokenizer, held_out, None, cfg.max_new_tokens)
    return {
        "method": method.label,
        "seed": seed,
        "curve": curve,
        "curve_length": curve_length,
        "final": curve[-1][1],
        "final_greedy": greedy.accuracy,
        "final_greedy_length": greedy.length,
        "seconds": time.perf_counter() - start,
        "metrics": metrics_out,
        "paired": paired,
        "curve_replicate": replicate,
    }


def _t_interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% t half-width over axis 0 (seeds); NaN half-width for one seed. (S, ...) -> (...), (...)."""
    from scipy import stats

    mean = values.mean(0)
    S = values.shape[0]
    if S < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, stats.t.ppf(0.975, S - 1) * values.std(0, ddof=1) / np.sqrt(S)


def summarize(runs: list[dict], target: float) -> list[dict]:
    """Per method (in first-seen order): mean curve over seeds with its 95% t-interval at every
    evaluation step, mean response-length curves (all held-out samples, correct ones), final accuracy
    mean and 95% t-interval, steps to reach ``target`` (median over seeds of the first evaluated step
    with acc >= target; None when fewer than half of the seeds reach it), final greedy accuracy and
    length, and the seconds per run."""
    out = []
    for name in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == name]
        curves = np.array([[a for _, a in r["curve"]] for r in rs], dtype=np.float64)
        curve_mean, curve_half = _t_interval(curves)
        mean, half = float(curve_mean[-1]), float(curve_half[-1])
        reach = [next((s for s, a in r["curve"] if a >= target), None) for r in rs]
        hit = sorted(s for s in reach if s is not None)
        steps_to_target = float(np.median(hit)) if len(hit) * 2 >= len(rs) and hit else None
        lengths = np.array([[row[1:] for row in r.get("curve_length", [])] for r in rs], dtype=np.float64)
        row = {
            "method": name,
            "seeds": len(rs),
            "final_acc": mean,
            "ci_low": mean - half,
            "ci_high": mean + half,
            "steps_to_target": steps_to_target,
            "seeds_reaching_target": len(hit),
            "curve_steps": [s for s, _ in rs[0]["curve"]],
            "curve_mean": curve_mean.tolist(),
            "curve_ci_low": (curve_mean - curve_half).tolist(),
            "curve_ci_high": (curve_mean + curve_half).tolist(),
            "curve_seeds": curves.tolist(),
            "seconds_per_run": float(np.mean([r["seconds"] for r in rs])),
            "final_greedy_acc": float(np.mean([r["final_greedy"] for r in rs])),
            "final_greedy_length": float(np.mean([r.get("final_greedy_length", np.nan) for r in rs])),
            "reward_mean": float(np.mean([r["metrics"].get("reward/mean", np.nan) for r in rs])),
        }
        if lengths.size:  # mean over seeds; the correct-only length over the seeds that had a correct sample
            row["curve_length_mean"] = lengths[..., 0].mean(0).tolist()
            correct = lengths[..., 1]
            seen = ~np.isnan(correct)
            total = np.where(seen, correct, 0.0).sum(0)
            count = seen.sum(0)
            row["curve_length_correct_mean"] = np.where(count > 0, total / np.maximum(count, 1), np.nan).tolist()
        out.append(row)
    return out
