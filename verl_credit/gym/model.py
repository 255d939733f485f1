"""The gym's policy: a tiny random-init Qwen2 + BPE built offline, warm-started by SFT.

Public API:
    ModelConfig                              -- size, SFT data and optimiser settings.
    warm_start(out_dir, task_cfg, model_cfg, seed, log) -> (path, info)  -- cached in ``out_dir``.
    load_policy(path) -> (model, tokenizer)  -- tokenizer padded on the left, for generation.
    encode_pairs(tokenizer, prompts, responses) -> (input_ids, attention_mask, loss_mask)  (N, L)
    response_logprobs(model, prompt_ids, prompt_mask, responses, response_mask) -> (B, T)
    response_stats(model, prompt_ids, prompt_mask, responses, response_mask) -> OldStats
                                             -- log-probs, entropy and sum of pi^2 from one forward.

The warm start trains on imperfect demonstrations (``task.demonstration``: random fillers and side
steps, ~error_rate wrong steps), response tokens only, then measures the greedy pass rate on
held-out problems. The result lives in ``out_dir/model`` with ``warm_start.json`` (the settings
and the pass rate): a second run with the same settings loads it instead of training.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from verl_credit.gym.task import TaskConfig, demonstration, make_problems
from verl_credit.testing import build_tiny_qwen2, load_tiny

__all__ = [
    "ModelConfig",
    "OldStats",
    "warm_start",
    "load_policy",
    "encode_pairs",
    "response_logprobs",
    "response_stats",
]


@dataclass(frozen=True)
class ModelConfig:
    """Attributes:
    hidden, layers, heads, vocab_size: the tiny Qwen2 and its BPE. Defaults 64, 2, 2, 400.
    sft_examples: demonstrations to train on (one per problem). Default 4000.
    sft_steps, sft_batch, sft_lr: AdamW steps, batch size and learning rate. Defaults 1500, 32, 3e-3.
    """

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    vocab_size: int = 400
    sft_examples: int = 4000
    sft_steps: int = 1500
    sft_batch: int = 32
    sft_lr: float = 3e-3


def load_policy(path):
    """(model, tokenizer) with left padding (batched generation)."""
    model, tokenizer = load_tiny(path)
    tokenizer.padding_side = "left"
    return model, tokenizer


def encode_pairs(tokenizer, prompts: list[str], responses: list[str]):
    """Right-padded prompt + response + eos ids.

    Shapes: N texts -> input_ids, attention_mask, loss_mask (1 on response and eos tokens), all (N, L).
    """
    rows, masks = [], []
    for p, r in zip(prompts, responses, strict=True):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p_ids + r_ids)
        masks.append([0] * len(p_ids) + [1] * len(r_ids))
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), L), dtype=torch.long)
    loss = torch.zeros((len(rows), L), dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)], attn[i, : len(r)], loss[i, : len(r)] = torch.tensor(r), 1, torch.tensor(m)
    return ids, attn, loss


def response_logprobs(model, prompt_ids, prompt_mask, responses, response_mask):
    """log pi(o_t | prompt, o_<t) of every response token (with grad when grad is enabled).

    Shapes: prompt_ids / prompt_mask (B, P) left-padded, responses / response_mask (B, T)
    right-padded -> (B, T) float32, 0 at masked positions. Position ids skip the left padding,
    as in ``generate``.
    """
    logp = _response_log_softmax(model, prompt_ids, prompt_mask, responses, response_mask)
    return logp.gather(2, responses.unsqueeze(2)).squeeze(2) * response_mask


@dataclass(frozen=True)
class OldStats:
    """What verl's old-log-prob forward gives (all FloatTensor[B, T], 0 at padding): log_probs of the
    sampled tokens, entropy H_t = -sum_v pi_v log pi_v (``actor.calculate_entropy``) and sum_pi_squared
    = sum_v pi_v^2 (``actor.calculate_sum_pi_squared``, the optimal token baseline's input)."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    sum_pi_squared: torch.Tensor


def response_stats(model, prompt_ids, prompt_mask, responses, response_mask) -> OldStats:
    """:class:`OldStats` of the responses from one forward over the full vocabulary (shapes as
    :func:`response_logprobs`)."""
    logp = _response_log_softmax(model, prompt_ids, prompt_mask, responses, response_mask)
    p = logp.exp()
    m = response_mask.float()
    return OldStats(
        log_probs=logp.gather(2, responses.unsqueeze(2)).squeeze(2) * m,
        entropy=-(p * logp).sum(-1) * m,
        sum_pi_squared=(p * p).sum(-1) * m,
    )


def _response_log_softmax(model, prompt_ids, prompt_mask, responses, response_mask):
    """log pi(. | prompt, o_<t) at every response position: (B, T, V) float32."""
    ids = torch.cat([prompt_ids, responses], dim=1)
    attn = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    position_ids = (attn.cumsum(1) - 1).clamp_min(0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits.float()
    P = prompt_ids.shape[1]
    return torch.log_softmax(logits[:, P - 1 : -1], dim=-1)


def warm_start(out_dir, task_cfg: TaskConfig, model_cfg: ModelConfig, seed: int = 0, log=print, eval_n: int = 128):
    """Build + SFT the tiny model under ``out_dir/model`` (or reuse it); return (path, info).

    info: the settings, ``pass_rate`` (greedy, ``eval_n`` held-out problems), ``seconds``, ``cached``.
    """
    from verl_credit.gym.rollout import evaluate

    path = Path(out_dir) / "model"
    key = {"task": dataclasses.asdict(task_cfg), "model": dataclasses.asdict(model_cfg), "seed": seed}
    meta = path / "warm_start.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        if info.get("key") == key:
            return path, {**info, "cached": True}
    start = time.perf_counter()
    rng = random.Random(seed + 17)
    problems = make_problems(model_cfg.sft_examples, seed=seed + 1, config=task_cfg)
    texts = ["".join(s.text for s in demonstration(p, rng, task_cfg)) for p in problems]
    corpus = [p.prompt + t for p, t in zip(problems, texts, strict=True)]
    build_tiny_qwen2(path, corpus, model_cfg.vocab_size, model_cfg.hidden, model_cfg.layers, model_cfg.heads, seed)
    model, tokenizer = load_tiny(path)
    ids, attn, loss_mask = encode_pairs(tokenizer, [p.prompt for p in problems], texts)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=model_cfg.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (1 - s / model_cfg.sft_steps))
    gen = torch.Generator().manual_seed(seed)
    for step in range(model_cfg.sft_steps):
        idx = torch.randint(0, len(problems), (model_cfg.sft_batch,), generator=gen)
        x, a, m = ids[idx], attn[idx], loss_mask[idx]
        L = int(a.sum(1).max())
        x, a, m = x[:, :L], a[:, :L], m[:, :L]
        logits = model(input_ids=x, attention_mask=a).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
        loss = (nll * m[:, 1:]).sum() / m[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == model_cfg.sft_steps - 1:
            log(f"  sft step {step:4d}  loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(path)
    tokenizer.padding_side = "left"
    held_out = make_problems(eval_n, seed=seed + 2, config=task_cfg)
    pass_rate = evaluate(model, tokenizer, held_out)
    info = {"key": key, "pass_rate": pass_rate, "eval_n": eval_n, "seconds": time.perf_counter() - start}
    meta.write_text(json.dumps(info, indent=2))
    return path, {**info, "cached": False}
