"""Tree-shaped scoring: a rollout's original and all its span-masked variants in one forward row.

A span-masked variant equals its original up to the span's first token s_k, so the prefix need
not be recomputed. One tree row holds

    tokens       the base (original) x_0 .. x_{L-1}, then each member's suffix x^m_{s_m} .. x^m_{L_m-1}
    position_ids 0 .. L-1, then s_m .. L_m-1 for each suffix
    segment      0 on the base, k on the k-th suffix of the row
    limit        s_m on the tokens of member m's suffix (0 on the base)

and the attention rule (:func:`tree_attention_mask`): query i sees key j iff

    pos[j] <= pos[i]  and  (segment[j] == segment[i]  or  (segment[j] == 0 and pos[j] < limit[i])).

Every token then sees exactly the context it has in its own sequence, so
log pi(x^m_t | x^m_<t) from the tree equals a separate forward of member m (up to float
summation order; < 1e-4 nats in fp32, tested). s_m is measured, not assumed: it is the length of
the longest common prefix of member m and the base, so any group of sequences is scored exactly.

Cost: a tree row has L + sum_m (L_m - s_m) tokens against sum_m L_m for separate forwards; the
scored positions are the only ones whose logits are computed (``logits_to_keep``).

Memory and the token budget (``max_tokens``): the dense mask of a row of T tokens is T^2 booleans
(SDPA; eager takes the same mask as a float bias). :func:`build_trees` cuts a group into several
rows of at most ``max_tokens`` tokens each (every row carries the base prefix its members need),
so one forward of ``rows x width <= max_tokens`` costs at most ``max_tokens^2`` mask entries.
A single sequence longer than the budget gets a row of its own (as the naive scorer does).

Public API:
    Tree                                -- one row: tokens, positions, segments, limits, and what it scores.
    common_prefix_length(a, b) -> int
    build_trees(sequences, targets, groups, max_tokens) -> list[Tree]
    pack_rows(trees, max_tokens) -> list[list[int]]   -- trees per forward (rows x width <= budget).
    pad_trees(trees, pad_id) -> dict of padded (N, T) tensors
    tree_attention_mask(position_ids, segment, limit, valid) -> BoolTensor[N, 1, T, T]
    forward_trees(model, trees, pad_id, temperature) -> {sequence index: FloatTensor[n_targets]}
    kv_cache_logprobs(model, sequences, targets, groups, temperature)  -- same numbers through a KV cache.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Tree",
    "common_prefix_length",
    "build_trees",
    "pack_rows",
    "pad_trees",
    "tree_attention_mask",
    "forward_trees",
    "kv_cache_logprobs",
    "attention_implementation",
    "unwrap_model",
    "TREE_ATTENTION",
]

# attention implementations that take an arbitrary 4D mask from ``tree_attention_mask``; flash
# attention takes none (packed rows are split at position resets), so a tree must never reach it
TREE_ATTENTION = ("sdpa", "eager")


@dataclass
class Tree:
    """One tree row. input_ids / position_ids / segment / limit: LongTensor[T]. The scored tokens:
    owners: LongTensor[G] (sequence index of each), query: LongTensor[G] (row index of the position
    predicting it), target: LongTensor[G] (its token id); per owner in target order."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    limit: torch.Tensor
    owners: torch.Tensor
    query: torch.Tensor
    target: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D LongTensors."""
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0, 0]) if diff.numel() else n


def _group_members(groups: torch.Tensor | None, count: int) -> list[list[int]]:
    if groups is None:
        return [[v] for v in range(count)]
    groups = groups.reshape(-1)
    if groups.numel() != count:
        raise ValueError(f"groups has {groups.numel()} entries for {count} sequences")
    members: dict[int, list[int]] = {}
    for v, g in enumerate(groups.tolist()):
        members.setdefault(int(g), []).append(v)
    return list(members.values())


def build_trees(
    sequences: Sequence[torch.Tensor],
    targets: torch.Tensor,
    groups: torch.Tensor | None = None,
    max_tokens: int | None = None,
) -> list[Tree]:
    """Tree rows scoring every sequence.

    sequences: V 1-D LongTensors; targets: LongTensor[V, 2], scored positions [t0, t1) of each
    (t0 >= 1); groups: LongTensor[V] or None: sequences with the same id share rows, the first of
    each group (lowest index) is the base; None gives every sequence a row of its own.
    max_tokens: most tokens in one row (None: unbounded); a group that does not fit is cut into
    several rows, each with the base prefix its members need.
    """
    targets = targets.reshape(-1, 2).long()
    if targets.shape[0] != len(sequences):
        raise ValueError(f"{targets.shape[0]} target ranges for {len(sequences)} sequences")
    if len(sequences) and int(targets[:, 0].min()) < 1:
        raise ValueError("a target range starts at position 0: nothing predicts the first token")
    trees = []
    for members in _group_members(groups, len(sequences)):
        base = sequences[members[0]].long()
        shared = [base.numel()] + [common_prefix_length(base, sequences[v].long()) for v in members[1:]]
        # the base first, then the members sharing most with it: the base row takes the short
        # suffixes, and a later row needs only the prefix its own members share
        order = [0] + sorted(range(1, len(members)), key=lambda j: -shared[j])
        plan: list[tuple[int, int]] = []  # (member, shared prefix length s_m) of the row being filled
        need = suffixes = 0  # base tokens the row carries, suffix tokens after them
        for j in order:
            v, s = members[j], shared[j]
            is_base = j == 0
            suffix = 0 if is_base else sequences[v].numel() - s
            if plan and max_tokens is not None and max(need, s) + suffixes + suffix > max_tokens:
                trees.append(_tree(sequences, targets, base, need, plan))
                plan, need, suffixes = [], 0, 0
            plan.append((v, s))
            need, suffixes = max(need, s), suffixes + suffix
        trees.append(_tree(sequences, targets, base, need, plan))
    return trees


def _tree(sequences, targets, base: torch.Tensor, need: int, plan: list[tuple[int, int]]) -> Tree:
    """One row: ``base[:need]``, then the suffix ``seq[s:]`` of each (member, s) in ``plan``."""
    zeros = torch.zeros(need, dtype=torch.long)
    ids, pos, seg, lim = [base[:need]], [torch.arange(need)], [zeros], [zeros]
    owners, query, target = [], [], []
    offset, k = need, 0  # where the next suffix starts in the row; suffixes so far
    for v, s in plan:
        seq = sequences[v].long()
        t0, t1 = int(targets[v, 0]), int(targets[v, 1])
        if t1 > seq.numel():
            raise ValueError(f"sequence {v}: target range [{t0}, {t1}) beyond its {seq.numel()} tokens")
        q = torch.arange(t0 - 1, t1 - 1)  # positions predicting the targets: in the base before s
        query.append(torch.where(q < s, q, offset + q - s))
        owners.append(torch.full((t1 - t0,), v, dtype=torch.long))
        target.append(seq[t0:t1])
        n = seq.numel() - s
        if n > 0:  # the base itself (s = its length) and prefixes of it add no suffix
            k += 1
            ids.append(seq[s:])
            pos.append(torch.arange(s, seq.numel()))
            seg.append(torch.full((n,), k, dtype=torch.long))
            lim.append(torch.full((n,), s, dtype=torch.long))
            offset += n
    return Tree(
        input_ids=torch.cat(ids),
        position_ids=torch.cat(pos),
        segment=torch.cat(seg),
        limit=torch.cat(lim),
        owners=torch.cat(owners),
        query=torch.cat(query),
        target=torch.cat(target),
    )


def pack_rows(trees: Sequence[Tree], max_tokens: int) -> list[list[int]]:
    """Tree indices per forward, longest first, with rows x width <= ``max_tokens`` (at least one row)."""
    order = sorted(range(len(trees)), key=lambda i: -trees[i].num_tokens)
    batches, i = [], 0
    while i < len(order):
        width = max(trees[order[i]].num_tokens, 1)
        count = max(1, max_tokens // width)
        batches.append(order[i : i + count])
        i += count
    return batches


def pad_trees(trees: Sequence[Tree], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (N, T) tensors input_ids, position_ids, segment (-1 on padding), limit, valid;
    and the scored tokens of all rows: row / query / target / owner (G,)."""
    N, T = len(trees), max(t.num_tokens for t in trees)
    out = {
        "input_ids": torch.full((N, T), pad_id, dtype=torch.long),
        "position_ids": torch.zeros((N, T), dtype=torch.long),
        "segment": torch.full((N, T), -1, dtype=torch.long),
        "limit": torch.zeros((N, T), dtype=torch.long),
        "valid": torch.zeros((N, T), dtype=torch.bool),
    }
    for n, t in enumerate(trees):
        L = t.num_tokens
        out["input_ids"][n, :L], out["position_ids"][n, :L] = t.input_ids, t.position_ids
        out["segment"][n, :L], out["limit"][n, :L], out["valid"][n, :L] = t.segment, t.limit, True
    out["row"] = torch.cat([torch.full_like(t.query, n) for n, t in enumerate(trees)])
    out["query"] = torch.cat([t.query for t in trees])
    out["target"] = torch.cat([t.target for t in trees])
    out["owner"] = torch.cat([t.owners for t in trees])
    return out


def tree_attention_mask(
    position_ids: torch.Tensor, segment: torch.Tensor, limit: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """BoolTensor[N, 1, T, T], True where query i may attend to key j (the rule in the module
    docstring); padding queries see only themselves (no empty softmax rows)."""
    pi, pj = position_ids[:, :, None], position_ids[:, None, :]
    si, sj = segment[:, :, None], segment[:, None, :]
    visible = (sj == si) | ((sj == 0) & (pj < limit[:, :, None]))
    allowed = (pj <= pi) & visible & valid[:, None, :] & valid[:, :, None]
    eye = torch.eye(position_ids.shape[1], dtype=torch.bool, device=position_ids.device)
    return (allowed | (eye & ~valid[:, :, None])).unsqueeze(1)


def unwrap_model(module):
    """The transformers model under FSDP1 / PEFT wrappers (FSDP2 wraps in place)."""
    model = getattr(module, "_fsdp_wrapped_module", module)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def attention_implementation(model) -> str:
    """The attention implementation a (possibly wrapped) transformers model runs."""
    config = getattr(unwrap_model(model), "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def _takes_logits_to_keep(model) -> bool:
    if unwrap_model(model) is not model:  # a wrapper's forward(*args, **kwargs) may not pass it on
        return False
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def forward_trees(model, trees: Sequence[Tree], pad_id: int, temperature: float = 1.0) -> dict[int, torch.Tensor]:
    """One forward of ``trees`` (padded to one batch) -> {sequence index: log-probs of its target
    tokens (FloatTensor, in target order)}, log softmax(logits / temperature) in fp32.

    The model's attention must take a 4D mask (``TREE_ATTENTION``): with flash attention a tree
    row would be read as packed sequences and scored wrong, so this refuses it.
    """
    impl = attention_implementation(model)
    if impl not in TREE_ATTENTION:
        raise RuntimeError(
            f"tree scoring needs an attention implementation that takes a 4D mask ({', '.join(TREE_ATTENTION)}); "
            f"the model runs {impl!r}. Switch it for the scoring call (see integration/worker.py) or use "
            "credit.counterfactual.scoring=naive"
        )
    device = next(model.parameters()).device
    batch = pad_trees(trees, pad_id)
    mask = tree_attention_mask(batch["position_ids"], batch["segment"], batch["limit"], batch["valid"]).to(device)
    if impl == "eager":  # eager adds the mask to the scores: a float bias, not 0/1
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, torch.finfo(dtype).min)
    kwargs = {}
    keep = torch.unique(batch["query"])
    if _takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep.to(device)
        column = torch.searchsorted(keep, batch["query"])
    else:
        column = batch["query"]
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=mask,
        position_ids=batch["position_ids"].to(device),
        use_cache=False,
        **kwargs,
    ).logits
    picked = logits[batch["row"].to(device), column.to(device)].float() / temperature
    logp = torch.log_softmax(picked, dim=-1).gather(1, batch["target"].to(device).unsqueeze(1)).squeeze(1).cpu()
    # each sequence is scored in one row, its targets contiguous: split the flat result by owner
    owners, counts = torch.unique_consecutive(batch["owner"], return_counts=True)
    return dict(zip(owners.tolist(), logp.split(counts.tolist()), strict=True))


@torch.no_grad()
def kv_cache_logprobs(
    model,
    sequences: Sequence[torch.Tensor],
    targets: torch.Tensor,
    groups: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> list[torch.Tensor]:
    """The tree's numbers without a 4D mask (for attention that takes none, e.g. flash attention):
    forward each group's base with ``use_cache=True``, then each member's suffix from s_m on a copy
    of the cache cropped to s_m. One row per forward; list of V FloatTensors like a score function.
    """
    device = next(model.parameters()).device
    targets = targets.reshape(-1, 2).long()
    out: list[torch.Tensor | None] = [None] * len(sequences)

    def pick(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits[rows].float() / temperature, dim=-1)
        return lp.gather(1, tokens.to(device).unsqueeze(1)).squeeze(1).cpu()

    for members in _group_members(groups, len(sequences)):
        base = sequences[members[0]].long()
        result = model(input_ids=base.to(device)[None], use_cache=True)
        base_logits, cache = result.logits[0], result.past_key_values
        for v in members:
            seq = sequences[v].long()
            t0, t1 = int(targets[v, 0]), int(targets[v, 1])
            s = base.numel() if v == members[0] else common_prefix_length(base, seq)
            q = torch.arange(t0 - 1, t1 - 1)
            lp = torch.empty(t1 - t0)
            shared = q < s
            if shared.any():
                lp[shared] = pick(base_logits, q[shared].to(device), seq[t0:t1][shared])
            if (~shared).any():
                if s > 0:
                    past = copy.deepcopy(cache)
                    past.crop(s)
                    logits = model(
                        input_ids=seq[s:].to(device)[None],
                        position_ids=torch.arange(s, seq.numel(), device=device)[None],
                        past_key_values=past,
                        use_cache=True,
                    ).logits[0]
                else:
                    logits = model(input_ids=seq.to(device)[None]).logits[0]
                lp[~shared] = pick(logits, (q[~shared] - s).to(device), seq[t0:t1][~shared])
            out[v] = lp
    return out  # type: ignore[return-value]
