"""Measurement 1, credit precision: does an estimator's token credit separate causal from filler?

Public API:
    auc(scores, positive, weights=None)         -- Mann-Whitney AUC with ties as 1/2, optional weights.
    bootstrap_auc(scores, positive, clusters, n_boot, seed) -> (auc, low, high)  -- 95% percentile CI.
    token_signals(methods, rollouts, model, tokenizer, config) -> {name: (B, T) scores}
    credit_precision(methods, rollouts, model, tokenizer, config, n_boot, seed) -> list[dict]

Notation: B rollouts, T response positions. A signal is a per-token score s_it, higher = more
credit. For an estimator with advantages A (B, T) the signal is the relative credit
    s_it = |A_it| / mean_{t valid} |A_it|
(a rollout-level estimator such as GRPO gives 1 everywhere: AUC exactly 0.5; for counterfactual
weighting s_it = w_it / mean w_i). Extra signals: ``ktae K`` = |K(o_it)|, KTAE's key-token value
alone; ``bingo significance (surprisal|ktae|counterfactual)`` = the length reward's significance
scores (surprisal and ktae min-max normalised; counterfactual: span I_hat, 0 outside measured
spans, from the scoring stage run on the rollouts of mixed groups).
Population: valid tokens of rollouts in mixed groups (some correct, some wrong: the only groups
where any estimator assigns credit); positives are CAUSAL tokens, negatives FILLER and SIDE tokens
(``task.LABELS``). AUC = P(s_pos > s_neg) + P(s_pos = s_neg) / 2. The bootstrap resamples groups
(tokens of one group are not independent) with replacement.
"""

from __future__ import annotations

import numpy as np
import torch

from verl_credit.batch import special_token_ids
from verl_credit.config import CreditConfig
from verl_credit.core.counterfactual import STAGE_FIELDS
from verl_credit.core.groups import group_index_from_uids, mixed_groups
from verl_credit.core.length_reward import ScorerInputs, get_scorer, minmax_normalize, run_scorer
from verl_credit.gym.model import response_stats
from verl_credit.gym.rollout import Method, Rollouts, estimate
from verl_credit.gym.task import CAUSAL, FILLER, SIDE
from verl_credit.scoring import hf_scorer, score_spans

__all__ = ["auc", "bootstrap_auc", "token_signals", "credit_precision"]


def auc(scores, positive, weights=None) -> float:
    """AUC = sum_{p, n} w_p w_n ([s_p > s_n] + [s_p = s_n] / 2) / (W_pos W_neg).

    Shapes: scores (N,), positive (N,) bool, weights (N,) >= 0 or None (all 1) -> float
    (NaN when a class has zero weight). With weights 1 this is U / (n_pos n_neg) of Mann-Whitney.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    _, inverse = np.unique(s, return_inverse=True)
    return _auc_from_bins(inverse, pos, w)


def _auc_from_bins(inverse: np.ndarray, pos: np.ndarray, w: np.ndarray) -> float:
    """AUC from the rank bin of every score (ties share a bin). (N,) -> float."""
    K = int(inverse.max()) + 1 if inverse.size else 0
    wp = np.bincount(inverse, weights=w * pos, minlength=K)
    wn = np.bincount(inverse, weights=w * ~pos, minlength=K)
    total_p, total_n = wp.sum(), wn.sum()
    if total_p <= 0 or total_n <= 0:
        return float("nan")
    below = np.cumsum(wn) - wn  # negatives strictly below each bin
    return float((wp * (below + 0.5 * wn)).sum() / (total_p * total_n))


def bootstrap_auc(scores, positive, clusters, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """AUC and its 95% percentile interval over ``n_boot`` resamples of whole clusters.

    Shapes: scores, positive, clusters (N,) -> (auc, low, high).
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    _, inverse = np.unique(s, return_inverse=True)
    _, cl = np.unique(np.asarray(clusters), return_inverse=True)
    point = _auc_from_bins(inverse, pos, np.ones_like(s))
    C = int(cl.max()) + 1 if cl.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, C, size=(n_boot, C)) if C else np.zeros((n_boot, 0), dtype=np.int64)
    values = []
    for d in draws:
        mult = np.bincount(d, minlength=C)[cl].astype(np.float64)  # how often each token's cluster was drawn
        values.append(_auc_from_bins(inverse, pos, mult))
    values = np.asarray(values)
    values = values[~np.isnan(values)]
    if not values.size:
        return point, float("nan"), float("nan")
    return point, float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def _relative(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|A| / mean_t |A| per row (rows with mean 0 -> 0), rounded to 1e-5 so that float error does
    not order tokens whose credit is equal (GRPO's relative credit is exactly 1). (B, T) -> (B, T)."""
    a = adv.double().abs() * mask
    mean = a.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    rel = torch.where(mean > 0, a / mean.clamp_min(1e-12), torch.zeros_like(a))
    return (rel * 1e5).round() / 1e5


@torch.no_grad()
def token_signals(
    methods: list[Method], r: Rollouts, model, tokenizer, config: CreditConfig
) -> dict[str, torch.Tensor]:
    """{signal name: (B, T) per-token scores} for every method plus KTAE's K and Bingo's scorers."""
    mask = r.response_mask.float()
    old = response_stats(model, r.prompt_ids, r.prompt_mask, r.responses, r.response_mask)
    signals: dict[str, torch.Tensor] = {}
    for m in methods:
        out = estimate(m, r, model, tokenizer, config, stats=old, ref_log_probs=old.log_probs)  # ref = warm start
        signals[m.label] = _relative(out.advantages, mask)
        if m.estimator == "ktae" and "key_token_values" in out.diagnostics:
            signals["ktae K"] = out.diagnostics["key_token_values"].abs() * mask
    groups = group_index_from_uids(r.uids)
    correct = r.rewards > config.correct_threshold
    ktae_params = config.ktae.with_special_ids(special_token_ids(tokenizer))
    for name in ("surprisal", "ktae"):
        scorer = get_scorer(name)
        inputs = ScorerInputs(
            response_mask=r.response_mask,
            fields={"responses": r.responses, "old_log_probs": old.log_probs},
            correct=correct,
            groups=groups,
            ktae_params=ktae_params,
            tokenizer=tokenizer,
        )
        raw = run_scorer(scorer, inputs)
        signals[f"bingo significance ({name})"] = minmax_normalize(raw, r.response_mask).float()
    rows = _mixed(r, config)[groups.group].nonzero().flatten().tolist()
    B = r.responses.shape[0]
    res = score_spans(
        tokenizer,
        hf_scorer(model, tokenizer.pad_token_id),
        [r.valid("prompt", i) for i in range(B)],
        [r.valid("response", i) for i in range(B)],
        config.counterfactual,
        rows=rows,
    )
    stage = dict(zip(STAGE_FIELDS, (res.scores, res.spans, res.answer), strict=True))
    inputs = ScorerInputs(r.response_mask, stage, correct, groups, ktae_params, tokenizer)
    signals["bingo significance (counterfactual)"] = run_scorer(get_scorer("counterfactual"), inputs).float()
    return signals


def _mixed(r: Rollouts, config: CreditConfig) -> torch.Tensor:
    """BoolTensor[G]: groups with some correct and some wrong rollouts."""
    return mixed_groups(r.rewards > config.correct_threshold, group_index_from_uids(r.uids))


def credit_precision(
    methods: list[Method], r: Rollouts, model, tokenizer, config: CreditConfig, n_boot: int = 1000, seed: int = 0
) -> list[dict]:
    """One row per signal: auc, ci_low, ci_high, tokens (causal / filler counted), mixed groups."""
    signals = token_signals(methods, r, model, tokenizer, config)
    groups = group_index_from_uids(r.uids)
    g = groups.group
    mixed = _mixed(r, config)
    keep = r.response_mask.bool() & mixed[g].unsqueeze(1)
    is_pos = keep & (r.labels == CAUSAL)
    is_neg = keep & ((r.labels == FILLER) | (r.labels == SIDE))
    sel = is_pos | is_neg
    clusters = g.unsqueeze(1).expand_as(r.labels)[sel].numpy()
    positive = is_pos[sel].numpy()
    rows = []
    for name, s in signals.items():
        value, low, high = bootstrap_auc(s[sel].numpy(), positive, clusters, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "signal": name,
                "auc": value,
                "ci_low": low,
                "ci_high": high,
                "causal_tokens": int(is_pos.sum()),
                "filler_tokens": int(is_neg.sum()),
                "mixed_groups": int(mixed.sum()),
            }
        )
    return rows
