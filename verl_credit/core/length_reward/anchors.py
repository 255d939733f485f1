"""Reference counts N_insig_ref, N_sig_ref of the length reward (``credit.length_reward.anchor``).

Public API:
    prompt_keys(prompts)               -- a stable key per rollout: a hash of its prompt token ids.
    PromptAnchors                      -- first-seen reference counts per prompt (LRU-bounded, state_dict).
    first_seen_reference_counts(n_insig, n_sig, nonempty, groups, keys, anchors)  (B,) -> (B,), (B,), (G,)
    first_seen_reference_counts_loop(...)                the same, one Python iteration per group
    group_reference_counts(n_insig, n_sig, correct, nonempty, groups)   (B,) -> (B,), (B,)
    group_reference_counts_loop(...)                     the same, one Python iteration per group

Notation: B rollouts (padding rows included), G groups (rollouts of one prompt, verl ``uid``),
N_insig_i, N_sig_i the insignificant / significant token counts of rollout i
(:func:`.shaping.significance_counts`).

    first_seen (default): N_insig_ref_g, N_sig_ref_g = mean over the non-empty rollouts (correct or
             not) of the first group seen with g's prompt (key: a hash of the prompt token ids),
             kept per prompt (LRU, ``anchor_capacity``) and saved with the checkpoint
    group:   R_g = the non-empty correct rollouts of group g if there is one, else all its non-empty
             rollouts;  N_insig_ref_g = mean_{j in R_g} N_insig_j,  N_sig_ref_g = mean_{j in R_g} N_sig_j

Groups without a non-empty rollout and padding rows get 0 (hence r_ins = r_sig = 0, see
:func:`.shaping.significance_ratios`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from verl_credit.core.checks import is_int
from verl_credit.core.groups import PADDING_UID_PREFIX, GroupIndex, group_sum

__all__ = [
    "PromptAnchors",
    "first_seen_reference_counts",
    "first_seen_reference_counts_loop",
    "group_reference_counts",
    "group_reference_counts_loop",
    "prompt_keys",
]


def group_reference_counts(
    n_insig: torch.Tensor, n_sig: torch.Tensor, correct: torch.Tensor, nonempty: torch.Tensor, groups: GroupIndex
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference counts of each rollout's group, for all groups at once (index ops, no loop).

        R_g = {non-empty correct rollouts of g} if non-empty, else {non-empty rollouts of g}
        N_insig_ref_g = mean_{j in R_g} N_insig_j,   N_sig_ref_g = mean_{j in R_g} N_sig_j

    Groups without a non-empty rollout and padding rows get 0.
    Shapes: n_insig, n_sig FloatTensor[B]; correct, nonempty BoolTensor[B]; groups.group [B]
            -> (N_insig_ref FloatTensor[B] float64, N_sig_ref FloatTensor[B] float64), per row.
    """
    g = groups.group
    use = (g >= 0) & nonempty
    G = groups.num_groups
    idx = g[use]
    c = correct[use].double()
    ones = torch.ones_like(c)

    def per_group(values: torch.Tensor) -> torch.Tensor:
        return group_sum(values, idx, G)

    n_all, n_corr = per_group(ones), per_group(c)
    ins, sig = n_insig[use].double(), n_sig[use].double()
    from_correct = n_corr > 0
    ref_ins = torch.where(from_correct, per_group(ins * c) / n_corr.clamp_min(1), per_group(ins) / n_all.clamp_min(1))
    ref_sig = torch.where(from_correct, per_group(sig * c) / n_corr.clamp_min(1), per_group(sig) / n_all.clamp_min(1))
    real = g >= 0
    gi = g.clamp_min(0)
    zero = torch.zeros(g.shape[0], dtype=torch.float64)
    if G == 0:
        return zero, zero.clone()
    return torch.where(real, ref_ins[gi], zero), torch.where(real, ref_sig[gi], zero)


def _members_loop(uids: Sequence[str]) -> dict[str, list[int]]:
    """Rows of each real group, in order of first appearance (for the loop references)."""
    members: dict[str, list[int]] = {}
    for i, uid in enumerate(uids):
        if not uid.startswith(PADDING_UID_PREFIX):
            members.setdefault(uid, []).append(i)
    return members


def group_reference_counts_loop(
    n_insig: torch.Tensor, n_sig: torch.Tensor, correct: torch.Tensor, nonempty: torch.Tensor, uids: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference loop for :func:`group_reference_counts` (one Python iteration per group)."""
    ref_ins = torch.zeros(len(uids), dtype=torch.float64)
    ref_sig = torch.zeros(len(uids), dtype=torch.float64)
    for rows in _members_loop(uids).values():
        usable = [i for i in rows if bool(nonempty[i])]
        reference = [i for i in usable if bool(correct[i])] or usable
        if not reference:
            continue
        ref_ins[rows] = sum(float(n_insig[i]) for i in reference) / len(reference)
        ref_sig[rows] = sum(float(n_sig[i]) for i in reference) / len(reference)
    return ref_ins, ref_sig


def prompt_keys(prompts: Sequence[torch.Tensor]) -> list[str]:
    """A stable key per rollout: the BLAKE2b-128 hex digest of its prompt token ids (valid tokens
    only, as int64). The same prompt gets the same key in every step and process.

    Shapes: B 1-D integer tensors -> B strings.
    """
    return [
        hashlib.blake2b(p.reshape(-1).to(torch.int64).numpy().tobytes(), digest_size=16).hexdigest() for p in prompts
    ]


class PromptAnchors:
    """First-seen reference counts per prompt, least recently seen dropped first beyond ``capacity``.

    ``resolve`` returns, per group, the counts stored for its prompt, storing the group's own counts
    when the prompt is new. ``evictions`` counts the prompts dropped so far. ``state_dict`` /
    ``load_state_dict`` (JSON-serialisable) keep the entries in their recency order, so a resumed
    run continues as an uninterrupted one.
    """

    def __init__(self, capacity: int = 100_000):
        if not (is_int(capacity) and capacity >= 1):
            raise ValueError(f"credit.length_reward.anchor_capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self.entries: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def resolve(
        self, keys: Sequence[str], ins: torch.Tensor, sig: torch.Tensor, usable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Anchors of G groups, in order (a prompt stored by an earlier group of the same call is found).

        keys: G prompt keys; ins, sig: FloatTensor[G] the groups' own counts; usable: BoolTensor[G]
        (False: the group has no non-empty rollout, nothing is stored and its anchor is 0)
        -> (N_insig_ref (G,), N_sig_ref (G,), new (G,) bool: anchored by this call).
        """
        out = torch.zeros(len(keys), 2, dtype=torch.float64)
        new = torch.zeros(len(keys), dtype=torch.bool)
        own = torch.stack([ins.double(), sig.double()], dim=1).tolist()
        ok = usable.tolist()
        for g, key in enumerate(keys):  # a dict lookup per prompt: the store is keyed by strings
            stored = self.entries.get(key)
            if stored is not None:
                self.entries.move_to_end(key)
            elif ok[g]:
                stored = self.entries[key] = (own[g][0], own[g][1])
                new[g] = True
                if len(self.entries) > self.capacity:
                    self.entries.popitem(last=False)
                    self.evictions += 1
            if stored is not None:
                out[g, 0], out[g, 1] = stored
        return out[:, 0], out[:, 1], new

    def metrics(self) -> dict[str, float]:
        """``length_reward/anchor_prompts/count`` (stored now) and ``anchor_evictions/count`` (so far)."""
        return {
            "length_reward/anchor_prompts/count": float(len(self.entries)),
            "length_reward/anchor_evictions/count": float(self.evictions),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "evictions": self.evictions,
            "entries": [[k, ins, sig] for k, (ins, sig) in self.entries.items()],  # oldest first
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"capacity", "evictions", "entries"}
        if set(state) != expected:
            raise ValueError(
                f"length reward anchor state: keys {sorted(state)}, expected {sorted(expected)} "
                "(credit.length_reward.anchor=first_seen)"
            )
        entries = [(str(k), (float(i), float(s))) for k, i, s in state["entries"]]
        dropped = max(0, len(entries) - self.capacity)  # a smaller capacity after resume: keep the newest
        self.entries = OrderedDict(entries[dropped:])
        self.evictions = int(state["evictions"]) + dropped


def _group_first_rows(groups: GroupIndex) -> torch.Tensor:
    """LongTensor[G]: the first row of each group."""
    real = groups.group >= 0
    rows = torch.arange(groups.group.shape[0])
    first = torch.full((groups.num_groups,), groups.group.shape[0], dtype=torch.long)
    return first.scatter_reduce_(0, groups.group[real], rows[real], reduce="amin")


def first_seen_reference_counts(
    n_insig: torch.Tensor,
    n_sig: torch.Tensor,
    nonempty: torch.Tensor,
    groups: GroupIndex,
    keys: Sequence[str],
    anchors: PromptAnchors,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference counts from the first sight of each group's prompt (see :class:`PromptAnchors`).

        own_g = mean over the non-empty rollouts of g of (N_insig, N_sig)   (correct or not)
        N_ref_g = anchors[key_g] if key_g was seen before, else own_g (and it is stored)

    keys: B prompt keys (:func:`prompt_keys`), equal within a group (ValueError naming the rollout
    otherwise); padding rows are ignored. Groups without a non-empty rollout and padding rows get 0.
    Shapes: n_insig, n_sig FloatTensor[B]; nonempty BoolTensor[B]; groups.group [B]
            -> (N_insig_ref FloatTensor[B] float64, N_sig_ref FloatTensor[B] float64, new BoolTensor[G]).
    """
    g, G = groups.group, groups.num_groups
    real = g >= 0
    if len(keys) != g.shape[0]:
        raise ValueError(f"{len(keys)} prompt keys for {g.shape[0]} rollouts")
    zero = torch.zeros(g.shape[0], dtype=torch.float64)
    if G == 0:
        return zero, zero.clone(), torch.zeros(0, dtype=torch.bool)
    first = _group_first_rows(groups)
    codes = {k: c for c, k in enumerate(dict.fromkeys(keys))}
    code = torch.tensor([codes[k] for k in keys], dtype=torch.long)
    differs = real & (code != code[first[g.clamp_min(0)]])
    if bool(differs.any()):
        row = int(differs.nonzero()[0])
        raise ValueError(
            f"rollout {row}: its prompt differs from the rest of its group (uid); "
            "credit.length_reward.anchor=first_seen keeps anchors per prompt"
        )
    use = real & nonempty
    idx = g[use]
    n = group_sum(torch.ones(idx.shape[0], dtype=torch.float64), idx, G)
    own_ins = group_sum(n_insig[use].double(), idx, G) / n.clamp_min(1)
    own_sig = group_sum(n_sig[use].double(), idx, G) / n.clamp_min(1)
    # groups in order of first appearance in the batch: of two new groups with one prompt, the first anchors it
    order = first.argsort()
    ins_o, sig_o, new_o = anchors.resolve(
        [keys[i] for i in first[order].tolist()], own_ins[order], own_sig[order], (n > 0)[order]
    )
    ref_ins, ref_sig, new = (torch.empty_like(t).scatter_(0, order, t) for t in (ins_o, sig_o, new_o))
    gi = g.clamp_min(0)
    return torch.where(real, ref_ins[gi], zero), torch.where(real, ref_sig[gi], zero), new


def first_seen_reference_counts_loop(
    n_insig: torch.Tensor,
    n_sig: torch.Tensor,
    nonempty: torch.Tensor,
    uids: Sequence[str],
    keys: Sequence[str],
    store: dict[str, tuple[float, float]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference loop for :func:`first_seen_reference_counts` with an unbounded dict ``store``
    (key -> (N_insig_ref, N_sig_ref)), updated in place; groups in order of first appearance."""
    ref_ins = torch.zeros(len(uids), dtype=torch.float64)
    ref_sig = torch.zeros(len(uids), dtype=torch.float64)
    for rows in _members_loop(uids).values():
        key = keys[rows[0]]
        usable = [i for i in rows if bool(nonempty[i])]
        if key not in store and usable:
            store[key] = (
                sum(float(n_insig[i]) for i in usable) / len(usable),
                sum(float(n_sig[i]) for i in usable) / len(usable),
            )
        if key in store:
            ref_ins[rows], ref_sig[rows] = store[key]
    return ref_ins, ref_sig
