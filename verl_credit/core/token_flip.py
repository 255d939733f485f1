"""Token flipping (``credit.diagnostics.token_flip_every``, METHODS.md section 5): no verl imports.

token_flip_shares(old, new, adv, mask)  -- share of tokens whose log-prob moved against the sign of
                                           their rollout's advantage, per sign; loop reference
                                           ``token_flip_shares_loop`` beside it.
"""

from __future__ import annotations

import torch

__all__ = ["token_flip_shares", "token_flip_shares_loop"]


def _rollout_signs(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sign of each rollout's mean advantage over its valid tokens. (B, T) -> (B,) in {-1, 0, 1}."""
    m = mask.to(advantages.dtype)
    return torch.sign((advantages * m).sum(-1))


def token_flip_shares(
    old_log_probs: torch.Tensor, new_log_probs: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, float]:
    """Share of tokens whose log-prob moved against their rollout's advantage sign (token flipping).

    s_i = sign(sum_t mask_it A_it) (the rollout's advantage sign; GRPO's A is constant per rollout),
    d_it = new_it - old_it. A valid token of a rollout with s_i != 0 flips when s_i d_it < 0.
        positive/share = #flips in rollouts with s_i > 0 / #their valid tokens
        negative/share = the same for s_i < 0
    NaN for a sign with no token. Also returns the token counts.

    Shape: (B, T) each -> dict of floats.
    """
    if not (old_log_probs.shape == new_log_probs.shape == advantages.shape == response_mask.shape):
        raise ValueError(
            "old_log_probs, new_log_probs, advantages and response_mask need one shape (B, T), got "
            f"{tuple(old_log_probs.shape)}, {tuple(new_log_probs.shape)}, {tuple(advantages.shape)}, "
            f"{tuple(response_mask.shape)}"
        )
    valid = response_mask.bool()
    sign = _rollout_signs(advantages.double(), response_mask)[:, None]  # (B, 1)
    flipped = (sign * (new_log_probs.double() - old_log_probs.double()) < 0) & valid  # (B, T)
    out = {}
    for name, rollouts in (("positive", sign > 0), ("negative", sign < 0)):
        tokens = valid & rollouts
        count = int(tokens.sum())
        out[f"{name}/share"] = float((flipped & rollouts).sum()) / count if count else float("nan")
        out[f"{name}/tokens"] = float(count)
    return out


def token_flip_shares_loop(old_log_probs, new_log_probs, advantages, response_mask) -> dict[str, float]:
    """Reference for :func:`token_flip_shares`: a Python loop over rollouts and tokens."""
    counts = {"positive": [0, 0], "negative": [0, 0]}  # [flips, tokens]
    for i in range(advantages.shape[0]):
        valid = [t for t in range(advantages.shape[1]) if response_mask[i, t]]
        total = sum(float(advantages[i, t]) for t in valid)
        if total == 0:
            continue
        name, s = ("positive", 1.0) if total > 0 else ("negative", -1.0)
        for t in valid:
            counts[name][1] += 1
            counts[name][0] += int(s * (float(new_log_probs[i, t]) - float(old_log_probs[i, t])) < 0)
    out = {}
    for name, (flips, tokens) in counts.items():
        out[f"{name}/share"] = flips / tokens if tokens else float("nan")
        out[f"{name}/tokens"] = float(tokens)
    return out
