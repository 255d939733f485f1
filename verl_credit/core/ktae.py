"""KTAE: key-token advantage estimation (Sun et al., arXiv 2505.16826).

Public API:
    KTAEParams                        -- the estimator's options (documented below).
    KTAEResult                        -- advantages (B, T), key-token values K (B, T), z (B,).
    key_token_values(...)             -- K at every valid position, vectorised over the batch.
    ktae_advantages(...)              -- A = mask * (z + K).
    ktae_advantages_loop(...)         -- the same with a Python loop per group and token id
                                         (reference for tests and the speed benchmark).

Notation: B rollouts, T response positions, G groups; in one group of N rollouts, C are correct
(r > correct_threshold) and W = N - C wrong. For a token id v:
    a = correct rollouts containing v, b = wrong rollouts containing v, c = C - a, d = W - b
    F(v)  = exp(-2 p) if p != 1 else 0,  p = two-sided Fisher exact p of [[a, b], [c, d]]
            (``fisher``: "authors" = their float32 arithmetic, "exact" = exact p; see below)
    IG(v) = H(C/N) - [(a+b)/N H(a/(a+b)) + (c+d)/N H(c/(c+d))]           (bits)
    x(v)  = asin(sqrt(a/C)) - asin(sqrt(b/W))
            + [use_tf] tf_C/(tf_W + tf_eps) - tf_W/(tf_C + tf_eps)
    tf_X  = f (k1+1) / (f + k1 (1 - b' + b' L_X/L_avg)),  f = occurrences of v in class X / L_X,
            L_X = valid tokens of class X, L_avg = (L_C + L_W)/2
    s(v)  = (alpha F + beta IG) x / (alpha + beta);   K(v) = (sigmoid(s) - 0.5) * 2 * top
    A_it  = mask_it * (z_i + K(o_it)),  z_i the group-relative outcome advantage.
K is per (group, token id): every occurrence of v in the group gets it, in correct and wrong
rollouts alike. Groups with no correct or no wrong rollout get K = 0 (and z = 0 for binary
rewards); groups of one and padding rows get A = 0. K is 0 for ``ignore_token_ids``.

Fisher p-values (``KTAEParams.fisher``). The authors' code (github xiaolizh1/KTAE) computes p in
float32 through lgamma and counts the tables with P(x) <= P(a) without tolerance, so a table whose
exact p is 1 usually gets p slightly off 1 and F = exp(-2p) ~ 0.135 instead of the p == 1 -> 0
branch, and exactly tied probabilities may round apart (p off by up to 0.5). The published results
come from that arithmetic: ``fisher="authors"`` (default) reproduces it
(``verl_credit.core.fisher.fisher_authors``, one x grid per group as wide as its largest
min(a+b, C) + 1), ``fisher="exact"`` uses exact p-values (``fisher_exact_two_sided``, scipy's
definition). On Zipf batches of 8 groups x 16 x 1024 tokens the two differ on a quarter to a third
of the valid tokens, by up to ~0.8 in A (docs/ktae.md gives the measured figures).

Remaining differences from the authors' code (below 1e-5 on A, tested on their outputs in
tests/core/data): the rest of K in float64 instead of float32, a/C instead of a/(C + 1e-10); a class
with no valid token gets tf = 0 instead of NaN; their K is forced to 0 for Qwen's id 151643 only (here
``ignore_token_ids``). On purpose: a group of one gets A = 0 here; theirs gives it z = r/(1 + eps) and
K = 0 (and indexes out of range when the group holds the batch's largest token id).

Non-binary rewards: "correct" is r > correct_threshold, so rewards in (0, 1) with the default
threshold 0 make every rollout correct and KTAE silently equal GRPO; ``ktae_advantages`` logs a
warning once per process when rewards differ inside a group but no group has both classes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from verl_credit.core.checks import is_int, is_number
from verl_credit.core.fisher import (
    fisher_authors,
    fisher_authors_loop,
    fisher_exact_two_sided,
    fisher_exact_two_sided_loop,
)
from verl_credit.core.groups import (
    GroupIndex,
    group_index_from_uids,
    group_outcome_advantage,
    group_outcome_advantage_loop,
    group_sum,
)

__all__ = [
    "KTAEParams",
    "KTAEResult",
    "information_gain",
    "key_token_values",
    "ktae_advantages",
    "ktae_advantages_loop",
]

FISHER_MODES = ("authors", "exact")
logger = logging.getLogger(__name__)
_warned_no_split = False  # the "rewards vary but the threshold splits no group" warning is logged once


@dataclass
class KTAEParams:
    """Options of KTAE: the ``credit.ktae`` block of the trainer config (this class is its schema).

    Attributes:
        alpha: weight of the Fisher term F. Authors' default 1.0.
        beta: weight of the information-gain term IG. Authors' default 1.0 (their scripts pass
            2.0 under another name that the code never reads).
        use_tf: add the BM25-style frequency ratio to the direction x. Default True.
        top: K lies in [-top, top] (strictly inside mathematically; float64 saturates to +-top
            when |s| > ~37, e.g. a token seen in one class only). Default 1.0.
        tf_eps: denominator guard of the tf ratio; 1e-5 as in the authors' code (a token seen in
            one class only saturates K to about +-top). Default 1e-5.
        tf_k1: BM25 saturation constant k1. Default 2.0.
        tf_b: BM25 length normalisation b' in [0, 1]. Default 0.5.
        ignore_token_ids: token ids whose K is forced to 0. None (default) lets the trainer use
            the tokenizer's pad and eos ids; [] ignores nothing.
        fisher: how the Fisher p-values are computed. "authors" (default): as the authors' code
            computes them, in float32 (lgamma, no tie tolerance), which the published results
            come from; a table whose exact p is 1 then mostly gets F ~ 0.135, not 0. "exact":
            exact p-values (scipy's), F = 0 whenever p = 1. See the module docstring.
    """

    alpha: float = 1.0
    beta: float = 1.0
    use_tf: bool = True
    top: float = 1.0
    tf_eps: float = 1e-5
    tf_k1: float = 2.0
    tf_b: float = 0.5
    ignore_token_ids: list[int] | None = None
    fisher: str = "authors"

    def __post_init__(self):
        if self.fisher not in FISHER_MODES:
            raise ValueError(f"credit.ktae.fisher must be one of {', '.join(FISHER_MODES)}, got {self.fisher!r}")
        for name in ("alpha", "beta", "top", "tf_eps", "tf_k1"):
            value = getattr(self, name)
            if not (is_number(value) and value >= 0):
                raise ValueError(f"credit.ktae.{name} must be a finite number >= 0, got {value!r}")
        if self.alpha + self.beta <= 0:
            raise ValueError("credit.ktae.alpha + credit.ktae.beta must be > 0 (K divides by their sum)")
        if not 0.0 <= self.tf_b <= 1.0:
            raise ValueError(f"credit.ktae.tf_b must lie in [0, 1], got {self.tf_b!r}")
        if self.ignore_token_ids is not None and not all(is_int(t) and t >= 0 for t in self.ignore_token_ids):
            raise ValueError(
                f"credit.ktae.ignore_token_ids must be null or a list of token ids >= 0, got {self.ignore_token_ids!r}"
            )

    def with_special_ids(self, special_token_ids) -> KTAEParams:
        """These params with ``ignore_token_ids`` resolved: the tokenizer's special ids when unset."""
        if self.ignore_token_ids is not None:
            return self
        return dataclasses.replace(self, ignore_token_ids=[int(t) for t in special_token_ids if t is not None])


@dataclass(frozen=True)
class KTAEResult:
    """advantages: FloatTensor[B, T]; key_token_values: FloatTensor[B, T] (K at valid positions,
    0 elsewhere); outcome_advantage: FloatTensor[B] (z); mixed_groups: BoolTensor[G] (groups with
    both correct and wrong rollouts, the only ones where K can be non-zero)."""

    advantages: torch.Tensor
    key_token_values: torch.Tensor
    outcome_advantage: torch.Tensor
    mixed_groups: torch.Tensor


def _entropy_bits(q: torch.Tensor) -> torch.Tensor:
    """Binary entropy H(q) in bits, H(0) = H(1) = 0. (...,) -> (...,)."""
    q = q.clamp(0.0, 1.0)
    terms = torch.stack([q, 1.0 - q])
    return -(torch.where(terms > 0, terms * torch.log2(terms.clamp_min(1e-300)), torch.zeros_like(terms))).sum(0)


def information_gain(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """IG in bits of "rollout contains v" about "rollout is correct", per 2x2 table [[a, b], [c, d]].

        IG = H((a+c)/N) - [(a+b)/N H(a/(a+b)) + (c+d)/N H(c/(c+d))],  N = a+b+c+d

    Shapes: (...,) float64 counts -> (...,) float64; empty rows contribute 0.
    """
    n = a + b + c + d
    has, lacks = a + b, c + d
    return _entropy_bits((a + c) / n) - (
        has / n * _entropy_bits(a / has.clamp_min(1)) + lacks / n * _entropy_bits(c / lacks.clamp_min(1))
    )


def _key_value(a, b, n_c, n_w, occ_c, occ_w, len_c, len_w, width, p: KTAEParams):
    """K for (group, token) pairs from their counts; all arguments float64 tensors of shape (P,).

    width: the group's Fisher x grid length (used by ``fisher="authors"`` only).
    """
    c, d = n_c - a, n_w - b
    if p.fisher == "authors":
        pval = fisher_authors(a.long(), b.long(), c.long(), d.long(), width.long()).double()
    else:
        pval = fisher_exact_two_sided(a.long(), b.long(), c.long(), d.long())
    fisher = torch.where(pval == 1.0, torch.zeros_like(pval), torch.exp(-2.0 * pval))
    ig = information_gain(a, b, c, d)
    x = torch.asin(torch.sqrt(a / n_c)) - torch.asin(torch.sqrt(b / n_w))
    if p.use_tf:
        l_avg = ((len_c + len_w) / 2).clamp_min(1e-12)
        f_c, f_w = occ_c / len_c.clamp_min(1), occ_w / len_w.clamp_min(1)
        tf_c = f_c * (p.tf_k1 + 1) / (f_c + p.tf_k1 * (1 - p.tf_b + p.tf_b * len_c / l_avg))
        tf_w = f_w * (p.tf_k1 + 1) / (f_w + p.tf_k1 * (1 - p.tf_b + p.tf_b * len_w / l_avg))
        x = x + tf_c / (tf_w + p.tf_eps) - tf_w / (tf_c + p.tf_eps)
    s = (p.alpha * fisher + p.beta * ig) * x / (p.alpha + p.beta)
    return (torch.sigmoid(s) - 0.5) * 2.0 * p.top


def key_token_values(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    correct: torch.Tensor,
    groups: GroupIndex,
    params: KTAEParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K(o_it) at every valid response position, for all groups at once.

    One sort of the keys (group, token id, rollout) gives, per (group, token) pair, how many
    correct / wrong rollouts contain the token (a, b) and how often it occurs in each class.

    Shapes: responses LongTensor[B, T], response_mask [B, T], correct BoolTensor[B]
            -> (K FloatTensor[B, T] float64, mixed BoolTensor[G]).
    """
    B, T = responses.shape
    g = groups.group
    n_c = group_sum((correct & (g >= 0)).double(), g.clamp_min(0), groups.num_groups)
    n_w = groups.sizes.double() - n_c
    mixed = (n_c > 0) & (n_w > 0)
    K = torch.zeros(B, T, dtype=torch.float64)
    row_ok = (g >= 0) & mixed[g.clamp_min(0)] & (groups.sizes[g.clamp_min(0)] > 1)
    valid = response_mask.bool() & row_ok.unsqueeze(1)
    if not valid.any():
        return K, mixed
    rows = valid.nonzero(as_tuple=True)[0]
    tok = responses[valid].long()
    if bool((tok < 0).any()):
        raise ValueError("field 'responses' holds a negative token id at a valid position")
    vocab = int(tok.max()) + 1
    tok_group = g[rows]
    is_c = correct[rows]

    # valid tokens per class and group: L_C, L_W
    len_c = group_sum(is_c.double(), tok_group, groups.num_groups)
    len_w = group_sum((~is_c).double(), tok_group, groups.num_groups)

    # (pair, rollout) entries, then pairs: one sort in total
    pair_key = tok_group * vocab + tok
    pr_key, pr_inverse, pr_count = torch.unique(pair_key * B + rows, return_inverse=True, return_counts=True)
    pr_row = pr_key % B
    pair, pr_pair = torch.unique_consecutive(pr_key // B, return_inverse=True)
    pr_correct = correct[pr_row].double()
    P = pair.numel()

    def per_pair(values):
        return torch.zeros(P, dtype=torch.float64).index_add_(0, pr_pair, values)

    a, b = per_pair(pr_correct), per_pair(1.0 - pr_correct)
    occ_c, occ_w = per_pair(pr_count * pr_correct), per_pair(pr_count * (1.0 - pr_correct))
    pg = pair // vocab
    # the authors' Fisher grid: one per group, as long as its largest min(a+b, C) + 1
    most_present = torch.zeros(groups.num_groups, dtype=torch.float64).scatter_reduce_(0, pg, a + b, "amax")
    width = torch.minimum(most_present, n_c) + 1
    k_pair = _key_value(a, b, n_c[pg], n_w[pg], occ_c, occ_w, len_c[pg], len_w[pg], width[pg], params)
    if params.ignore_token_ids:
        ignore = torch.tensor(sorted(set(params.ignore_token_ids)), dtype=torch.int64)
        k_pair = torch.where(torch.isin(pair % vocab, ignore), torch.zeros_like(k_pair), k_pair)
    K[valid] = k_pair[pr_pair[pr_inverse]]
    return K, mixed


def ktae_advantages(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores: torch.Tensor,
    groups: GroupIndex,
    params: KTAEParams,
    *,
    correct_threshold: float = 0.0,
    norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> KTAEResult:
    """KTAE token-level advantages A = mask * (z + K).

    correct_threshold: a rollout is correct when its reward > this (default 0). A warning is logged
        (once per process) when rewards differ inside a group but this threshold splits no group.
    norm_adv_by_std / epsilon: the outcome advantage z, see ``group_outcome_advantage``.
    Shapes: responses LongTensor[B, T], response_mask [B, T], scores FloatTensor[B] (outcome
    rewards, already validated finite) -> KTAEResult (advantages [B, T] float32, ...).
    """
    if responses.shape != response_mask.shape:
        raise ValueError(
            f"responses {tuple(responses.shape)} and response_mask {tuple(response_mask.shape)} must both be (B, T)"
        )
    correct = scores > correct_threshold
    z = group_outcome_advantage(scores, groups, norm_adv_by_std, epsilon)
    K, mixed = key_token_values(responses, response_mask, correct, groups, params)
    _warn_if_threshold_splits_no_group(scores, groups, mixed, correct_threshold)
    mask = response_mask.to(torch.float64) * (groups.group >= 0).unsqueeze(1)
    adv = (z.double().unsqueeze(1) + K) * mask
    return KTAEResult(advantages=adv.float(), key_token_values=K.float(), outcome_advantage=z, mixed_groups=mixed)


def _warn_if_threshold_splits_no_group(scores, groups: GroupIndex, mixed, correct_threshold: float) -> None:
    """Log once per process when rewards differ inside some group but no group is split into correct
    and wrong rollouts (non-binary rewards, e.g. in (0, 1) with correct_threshold 0): K is then 0
    everywhere and KTAE silently equals the GRPO outcome advantage."""
    global _warned_no_split
    if _warned_no_split or bool(mixed.any()):
        return
    real = groups.group >= 0
    if not real.any():
        return
    g, s = groups.group[real], scores[real].double()
    lo = torch.full((groups.num_groups,), math.inf, dtype=torch.float64).scatter_reduce_(0, g, s, "amin")
    hi = torch.full((groups.num_groups,), -math.inf, dtype=torch.float64).scatter_reduce_(0, g, s, "amax")
    varied = int((hi > lo).sum())
    if varied == 0:
        return
    _warned_no_split = True
    logger.warning(
        "KTAE: rewards differ inside %d group(s) (values from %.4g to %.4g), but no group has both a correct "
        "(reward > credit.correct_threshold = %g) and a wrong rollout, so K = 0 everywhere and KTAE equals "
        "GRPO. Non-binary rewards need a threshold between the outcomes (e.g. credit.correct_threshold=0.5 "
        "for rewards in [0, 1]). Logged once.",
        varied,
        float(s.min()),
        float(s.max()),
        correct_threshold,
    )


def ktae_advantages_loop(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores: torch.Tensor,
    uids: Sequence[str],
    params: KTAEParams,
    *,
    correct_threshold: float = 0.0,
    norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference KTAE: a Python loop over groups and, inside each, over its token ids.

    Returns (advantages FloatTensor[B, T], K FloatTensor[B, T]). Written for clarity, not speed.
    """
    B, T = responses.shape
    z = group_outcome_advantage_loop(scores, uids, norm_adv_by_std, epsilon)
    K = torch.zeros(B, T, dtype=torch.float64)
    groups = group_index_from_uids(uids)
    mask = response_mask.bool()
    for gid in range(groups.num_groups):
        members = (groups.group == gid).nonzero().flatten().tolist()
        correct = [i for i in members if float(scores[i]) > correct_threshold]
        wrong = [i for i in members if float(scores[i]) <= correct_threshold]
        if len(members) < 2 or not correct or not wrong:
            continue
        seqs = {i: responses[i][mask[i]].tolist() for i in members}
        len_c = sum(len(seqs[i]) for i in correct)
        len_w = sum(len(seqs[i]) for i in wrong)
        vocab = sorted({t for i in members for t in seqs[i]})
        present = {v: sum(v in seqs[i] for i in members) for v in vocab}
        width = min(max(present.values(), default=0), len(correct)) + 1  # the authors' Fisher grid
        key_of = {}
        for v in vocab:
            a = sum(v in seqs[i] for i in correct)
            b = sum(v in seqs[i] for i in wrong)
            occ_c = sum(seqs[i].count(v) for i in correct)
            occ_w = sum(seqs[i].count(v) for i in wrong)
            key_of[v] = _key_value_scalar(a, b, len(correct), len(wrong), occ_c, occ_w, len_c, len_w, width, params)
        for v in params.ignore_token_ids or ():
            key_of[v] = 0.0
        for i in members:
            for t in range(T):
                if mask[i, t]:
                    K[i, t] = key_of[int(responses[i, t])]
    adv = (z.double().unsqueeze(1) + K) * mask
    is_pad = groups.group < 0
    adv[is_pad] = 0.0
    return adv.float(), K.float()


def _key_value_scalar(a, b, n_c, n_w, occ_c, occ_w, len_c, len_w, width, p: KTAEParams) -> float:
    """K(v) for one token with plain Python floats (the formula block of the module docstring)."""

    def h(q):
        return 0.0 if q <= 0.0 or q >= 1.0 else -(q * math.log2(q) + (1 - q) * math.log2(1 - q))

    n = n_c + n_w
    c, d = n_c - a, n_w - b
    if p.fisher == "authors":
        pval = fisher_authors_loop(a, b, c, d, width)
    else:
        pval = fisher_exact_two_sided_loop(a, b, c, d)
    fisher = 0.0 if pval == 1.0 else math.exp(-2.0 * pval)
    h_has = h(a / (a + b)) if a + b else 0.0
    h_lacks = h(c / (c + d)) if c + d else 0.0
    ig = h(n_c / n) - ((a + b) / n * h_has + (c + d) / n * h_lacks)
    x = math.asin(math.sqrt(a / n_c)) - math.asin(math.sqrt(b / n_w))
    if p.use_tf:
        l_avg = (len_c + len_w) / 2
        f_c = occ_c / len_c if len_c else 0.0
        f_w = occ_w / len_w if len_w else 0.0
        tf_c = f_c * (p.tf_k1 + 1) / (f_c + p.tf_k1 * (1 - p.tf_b + p.tf_b * len_c / l_avg))
        tf_w = f_w * (p.tf_k1 + 1) / (f_w + p.tf_k1 * (1 - p.tf_b + p.tf_b * len_w / l_avg))
        x += tf_c / (tf_w + p.tf_eps) - tf_w / (tf_c + p.tf_eps)
    s = (p.alpha * fisher + p.beta * ig) * x / (p.alpha + p.beta)
    sigmoid = 1.0 / (1.0 + math.exp(-s)) if s >= 0 else math.exp(s) / (1.0 + math.exp(s))
    return (sigmoid - 0.5) * 2.0 * p.top
