"""The workers' tree-shaped scoring forward (``credit.counterfactual.scoring=tree``).

    EngineTreeScorer(actor, meta, max_batch_tokens, pad_id) -- a score function (see ``scoring``):
        with ``groups`` it scores tree rows (``verl_credit.tree``) by calling the actor's FSDP
        module itself, no grad, inside the engine's eval mode and autocast, with the model's
        attention switched to SDPA for the call and restored after; without ``groups`` (the
        reference product, ``scoring=naive``) it hands the sequences to verl's engine
        (``worker.engine_scorer``).
    tree_unsupported(actor) -> str | None -- why the tree forward cannot run on this engine.
    tree_attention(module) -> "sdpa" | "eager" -- what the tree forward switches the model to.

Why not verl's ``infer_batch``: with ``use_remove_padding`` the engine packs rows and passes
``attention_mask=None`` with the given ``position_ids`` to flash attention, which would read a
tree row's position resets as sequence starts and score it wrong. The tree forward therefore
never goes through the engine's input preparation: it passes a 4D mask that only SDPA / eager
accept, and ``tree.forward_trees`` refuses any other attention implementation (the guard). A
model without SDPA support runs the tree with eager attention (exact, slower).

Falls back to the engine (naive scoring, logged once per process) when the tree forward would not
be exact: Ulysses sequence parallelism (it lives in verl's patched flash-attention forward), fused
kernels (verl replaces the model's forward, no logits), or an engine that is not verl's FSDP
engine.

dp ranks: every rank of the dp group makes the same number of module forwards (an all-reduce MAX
of the forward count; ranks with fewer run a two-token throw-away row), because FSDP all-gathers
parameters inside each forward.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext

import torch

from verl_credit.tree import build_trees, forward_trees, pack_rows, unwrap_model

__all__ = ["EngineTreeScorer", "tree_unsupported", "tree_attention", "scoring_attention"]

logger = logging.getLogger(__name__)
_warned: set[str] = set()


def tree_unsupported(actor) -> str | None:
    """None when the actor's engine can run the tree forward exactly, else the reason."""
    engine = getattr(actor, "engine", None)
    module = getattr(engine, "module", None)
    if module is None:
        return "the actor engine has no FSDP module (tree scoring needs verl's FSDP engine)"
    if getattr(engine, "ulysses_sequence_parallel_size", 1) > 1:
        return "Ulysses sequence parallelism is on (it only exists in verl's flash-attention path)"
    engine_config = getattr(actor, "engine_config", None)
    if engine_config is not None and getattr(engine_config, "use_fused_kernels", False):
        return "use_fused_kernels replaces the model's forward (no logits to score)"
    return None


def tree_attention(module) -> str:
    """The attention the tree forward runs: SDPA where the model supports it, else eager (every
    transformers model has it; it takes the tree mask as a float bias, exact but slower)."""
    return "sdpa" if getattr(unwrap_model(module), "_supports_sdpa", False) else "eager"


@contextmanager
def scoring_attention(module, implementation: str = "sdpa"):
    """Run the model with ``implementation`` inside the block, then restore what it had."""
    config = unwrap_model(module).config
    previous = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = previous


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("verl_credit: counterfactual scoring falls back to naive forwards: %s", reason)


def _max_over_dp(count: int, group) -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([count], dtype=torch.long)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=group)
        return int(t)
    return count


class EngineTreeScorer:
    """Score function over the actor's FSDP module (tree rows) or verl's engine (plain sequences).

    ``forward_tokens``: tokens run so far on this rank (tree rows or naive sequences, no padding).
    """

    def __init__(self, actor, meta: dict, max_batch_tokens: int, pad_id: int | None, naive):
        self.actor, self.naive = actor, naive
        self.temperature = float(meta.get("temperature", 1.0))
        self.max_batch_tokens = int(max_batch_tokens)
        self.pad_id = 0 if pad_id is None else int(pad_id)
        self.forward_tokens = 0

    def __call__(self, sequences, targets, groups=None) -> list[torch.Tensor]:
        reason = tree_unsupported(self.actor) if groups is not None else None
        if reason is not None:
            _warn_once(reason)
        if groups is None or reason is not None:
            self.forward_tokens += sum(int(s.numel()) for s in sequences)
            return self.naive(sequences, targets)
        engine = self.actor.engine
        trees = build_trees(sequences, targets.reshape(-1, 2), groups, self.max_batch_tokens)
        batches = pack_rows(trees, self.max_batch_tokens)
        calls = _max_over_dp(len(batches), engine.get_data_parallel_group())
        throwaway = build_trees([torch.zeros(2, dtype=torch.long)], torch.tensor([[1, 2]]))
        self.forward_tokens += sum(t.num_tokens for t in trees)
        dtype = getattr(engine, "_autocast_dtype", torch.float32)
        device = next(engine.module.parameters()).device.type
        autocast = nullcontext() if dtype == torch.float32 else torch.autocast(device_type=device, dtype=dtype)
        out: dict[int, torch.Tensor] = {}
        attention = scoring_attention(engine.module, tree_attention(engine.module))
        with engine.eval_mode(), torch.no_grad(), attention, autocast:
            for i in range(calls):
                rows = [trees[j] for j in batches[i]] if i < len(batches) else throwaway
                scored = forward_trees(engine.module, rows, self.pad_id, self.temperature)
                if i < len(batches):
                    out.update(scored)
        return [out[v] for v in range(len(sequences))]
