"""High-entropy token filter ("80/20", Wang et al., arXiv 2506.01939): the policy gradient only on the
tokens whose entropy under the sampling policy is in the top ``quantile`` of the step's valid tokens.

Public API:
    TokenFilterConfig                              -- the ``credit.token_filter`` block (off by default).
    DENOMINATORS                                   -- ("all", "kept"): the token-mean denominator after filtering.
    entropy_threshold(entropy, mask, quantile)     -- (B, T), (B, T) -> scalar tau.
    high_entropy_mask(entropy, mask, quantile)     -- (B, T) -> (BoolTensor[B, T] keep, tau).
    high_entropy_mask_loop(entropy, mask, quantile)-- the same with a Python sort (reference for tests).
    filter_advantages(advantages, keep, mask, denominator) -- (B, T) -> (B, T).
    token_filter_metrics(entropy, mask, keep, advantages, tau) -> dict[str, float]

Notation: B rollouts, T response positions, N = sum(mask) valid tokens of the whole step batch,
H_it the entropy of the sampling policy at token t of rollout i (verl's ``entropys``, computed in the
old-log-prob forward with ``actor.calculate_entropy=true``).

Threshold: k = ceil(quantile * N), tau = the k-th largest H_it over the valid tokens, and
keep_it = mask_it & (H_it >= tau). At least k tokens are kept (more only when entropies tie at tau).
The threshold is taken over the whole step batch, before it is cut into dp shards and mini-batches,
so every rank and mini-batch uses the same tau (a mini-batch may keep more or fewer than ``quantile``
of its own tokens).

Loss denominator after filtering (``denominator``):
    "all":  A'_it = A_it * keep_it. A dropped token has A' = 0, so every policy loss that is zero and
            flat at A = 0 (verl's vanilla/dual-clip PPO) gives it no gradient, and it stays in the
            token-mean denominator: the loss is (1/N) sum keep * l. This is what TRL does
            (``top_entropy_quantile`` multiplies the per-token loss by the mask and keeps the denominator);
            the step's gradient is about ``quantile`` times GRPO's, which AdamW largely normalises away.
    "kept": A'_it = A_it * keep_it * N / N_kept. For losses homogeneous of degree 1 in a positive scale
            of A (vanilla and dual-clip PPO: the clip decision depends only on the sign of A) this equals
            (1/N_kept) sum keep * l, the mean over the kept tokens, with N and N_kept counted over the
            step batch (verl normalises each mini-batch by its own tokens, so per mini-batch it is exact
            in expectation, not row by row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "TokenFilterConfig",
    "DENOMINATORS",
    "entropy_threshold",
    "high_entropy_mask",
    "high_entropy_mask_loop",
    "filter_advantages",
    "token_filter_metrics",
]

DENOMINATORS = ("all", "kept")


@dataclass
class TokenFilterConfig:
    """Options of the high-entropy token filter: the ``credit.token_filter`` block.

    Attributes:
        entropy_quantile: float in (0, 1] or None, default None (off). Keep the policy gradient on the
            top ``entropy_quantile`` of the step batch's valid tokens by entropy under the sampling
            policy (verl's ``entropy`` from the old-log-prob forward, at ``rollout.temperature``);
            the other tokens get advantage 0. 0.2 is the paper's value (Wang et al., arXiv
            2506.01939; TRL ``top_entropy_quantile``). Applied after any advantage estimator (verl's
            or verl_credit's), the counterfactual token weights and the length reward.
        denominator: "all" or "kept", default "all". The token-mean denominator after filtering.
            "all": A' = A * keep; dropped tokens stay in the loss's denominator (TRL's aggregation:
            per-token loss times the mask, same denominator), so a step's gradient is about
            ``entropy_quantile`` times the unfiltered one and the learning rate and clip behave as in
            the paper's runs. Works with every token-level loss and ``loss_agg_mode``; the default.
            "kept": A' = A * keep * N / N_kept (step-batch counts): the mean over the kept tokens,
            exact for losses linear in a positive scale of A (verl's ``vanilla`` incl. dual-clip,
            ``cispo``, ``gpg``, ``dppo_tv``, ``dppo_kl``) with ``loss_agg_mode=token-mean``; the run
            refuses it with other losses (their clip or penalty terms do not scale with A).
    """

    entropy_quantile: float | None = None
    denominator: str = "all"

    def __post_init__(self):
        key = "credit.token_filter"
        q = self.entropy_quantile
        if q is not None and (
            isinstance(q, bool) or not isinstance(q, int | float) or not math.isfinite(q) or not 0.0 < q <= 1.0
        ):
            raise ValueError(f"{key}.entropy_quantile must be null (off) or a number in (0, 1], got {q!r}")
        if self.denominator not in DENOMINATORS:
            raise ValueError(f"{key}.denominator must be one of {', '.join(DENOMINATORS)}, got {self.denominator!r}")

    @property
    def enabled(self) -> bool:
        return self.entropy_quantile is not None


def _check(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """Validated boolean mask; ValueError naming the argument otherwise."""
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 < float(quantile) <= 1.0:
        raise ValueError(f"token filter: quantile must be a number in (0, 1], got {quantile!r}")
    if entropy.shape != mask.shape or entropy.dim() != 2:
        raise ValueError(
            f"token filter: entropy and response_mask must both be (B, T), got {tuple(entropy.shape)} "
            f"and {tuple(mask.shape)}"
        )
    valid = mask.bool()
    if not bool(torch.isfinite(entropy[valid]).all()):
        bad = (valid & ~torch.isfinite(entropy)).nonzero()[0].tolist()
        raise ValueError(f"token filter: entropy is not finite at valid token (row {bad[0]}, position {bad[1]})")
    return valid


def entropy_threshold(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """tau: the k-th largest entropy over the valid tokens, k = ceil(quantile * N).

    Shapes: entropy FloatTensor[B, T], mask (B, T) 0/1 -> 0-d tensor (NaN when N = 0).
    """
    valid = _check(entropy, mask, quantile)
    values = entropy[valid].float()
    n = values.numel()
    if n == 0:
        return torch.tensor(float("nan"))
    k = min(n, max(1, math.ceil(float(quantile) * n - 1e-9)))
    return torch.kthvalue(values, n - k + 1).values  # k-th largest = (n - k + 1)-th smallest


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """keep_it = mask_it & (H_it >= tau): the top ``quantile`` of the step's valid tokens by entropy.

    Shapes: entropy FloatTensor[B, T], mask (B, T) -> (BoolTensor[B, T], 0-d tau).
    """
    tau = entropy_threshold(entropy, mask, quantile)
    if torch.isnan(tau):
        return torch.zeros_like(mask, dtype=torch.bool), tau
    return mask.bool() & (entropy.float() >= tau), tau


def high_entropy_mask_loop(entropy: torch.Tensor, mask: torch.Tensor, quantile: float):
    """Reference for :func:`high_entropy_mask`: sort the valid entropies in Python, pick the k-th largest,
    then visit every token."""
    _check(entropy, mask, quantile)
    B, T = entropy.shape
    values = sorted(
        (float(entropy[i, t]) for i in range(B) for t in range(T) if mask[i, t]),
        reverse=True,
    )
    keep = torch.zeros(B, T, dtype=torch.bool)
    if not values:
        return keep, torch.tensor(float("nan"))
    k = min(len(values), max(1, math.ceil(float(quantile) * len(values) - 1e-9)))
    tau = values[k - 1]
    for i in range(B):
        for t in range(T):
            keep[i, t] = bool(mask[i, t]) and float(entropy[i, t]) >= tau
    return keep, torch.tensor(tau)


def filter_advantages(
    advantages: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor, denominator: str = "all"
) -> torch.Tensor:
    """A' = A * keep ("all") or A * keep * N / N_kept ("kept"); see the module docstring.

    Shapes: advantages FloatTensor[B, T], keep BoolTensor[B, T], mask (B, T) -> FloatTensor[B, T].
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"token filter: denominator must be one of {DENOMINATORS}, got {denominator!r}")
    if advantages.shape != keep.shape or keep.shape != mask.shape:
        raise ValueError(
            f"token filter: advantages, keep and response_mask must have one shape, got {tuple(advantages.shape)}, "
            f"{tuple(keep.shape)}, {tuple(mask.shape)}"
        )
    out = advantages * keep.to(advantages.dtype)
    if denominator == "kept":
        n_valid, n_kept = int(mask.bool().sum()), int((keep & mask.bool()).sum())
        if n_kept > 0:
            out = out * (n_valid / n_kept)
    return out


def token_filter_metrics(
    entropy: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, advantages: torch.Tensor, tau: torch.Tensor
) -> dict[str, float]:
    """kept_fraction = N_kept / N; threshold = tau; entropy_kept/mean, entropy_dropped/mean (NaN when empty);
    advantage_mass_kept = sum_kept |A| / sum_valid |A| (of the advantages BEFORE filtering; NaN when all zero)."""
    valid = mask.bool()
    kept = keep & valid
    dropped = valid & ~keep
    n_valid = int(valid.sum())
    mass = float(advantages.abs()[valid].sum())

    def mean(sel: torch.Tensor) -> float:
        return float(entropy[sel].float().mean()) if bool(sel.any()) else float("nan")

    return {
        "kept_fraction": int(kept.sum()) / n_valid if n_valid else float("nan"),
        "threshold": float(tau),
        "entropy_kept/mean": mean(kept),
        "entropy_dropped/mean": mean(dropped),
        "advantage_mass_kept": float(advantages.abs()[kept].sum()) / mass if mass > 0 else float("nan"),
    }
