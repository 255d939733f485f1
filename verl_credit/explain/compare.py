"""Estimators against each other: the views compared, one rollout chosen for a side-by-side look,
per-group rank correlations of the token values, and which estimators have any signal at all.

    main_views(sections) -> [(key, TokenView)]   each estimator's first (main) view.
    rank_correlations(views, mask, uids) -> {group: {"estimators", "rho", "tokens"}}
        Spearman's rho (``scipy.stats.spearmanr``: ties get their average rank) between every two
        estimators' values over the valid tokens of the group's rollouts; None where one of the two
        is constant over those tokens (no ranking to compare).
    choose_rollout(correct, finished, uids, measured) -> (index, why)
    silent_views(views, mask) -> [key]           views whose every token sits at the centre.
    mixed_groups(uids, correct) -> [group]       groups with both correct and wrong rollouts.

Shapes: views' values (B, T); mask (B, T); uids / finished / measured / correct: B entries.
"""

from __future__ import annotations

import math
import warnings

import torch

__all__ = ["main_views", "rank_correlations", "choose_rollout", "silent_views", "mixed_groups"]


def main_views(sections) -> list[tuple[str, object]]:
    return [(s.key, s.views[0]) for s in sections if s.views]


def mixed_groups(uids: list[str], correct: list[bool]) -> list[str]:
    seen: dict[str, set[bool]] = {}
    for uid, ok in zip(uids, correct, strict=True):
        seen.setdefault(uid, set()).add(bool(ok))
    return [uid for uid, kinds in seen.items() if len(kinds) == 2]


def _constant(x: torch.Tensor) -> bool:
    return x.numel() < 2 or bool((x == x[0]).all())


def rank_correlations(views: list[tuple[str, object]], mask: torch.Tensor, uids: list[str]) -> dict[str, dict]:
    from scipy.stats import spearmanr

    keys = [k for k, _ in views]
    out = {}
    for uid in dict.fromkeys(uids):
        rows = torch.tensor([u == uid for u in uids])
        sel = mask.bool() & rows.unsqueeze(1)
        values = [v.values[sel].double() for _, v in views]
        rho: list[list[float | None]] = []
        for a in values:
            line = []
            for b in values:
                if _constant(a) or _constant(b):
                    line.append(None)
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = float(spearmanr(a.numpy(), b.numpy()).statistic)
                line.append(None if math.isnan(r) else round(r, 4))
            rho.append(line)
        out[uid] = {"estimators": keys, "rho": rho, "tokens": int(sel.sum())}
    return out


def silent_views(views: list[tuple[str, object]], mask: torch.Tensor) -> list[str]:
    """Keys of the views whose every valid token equals the view's centre (no signal anywhere)."""
    m = mask.bool()
    return [key for key, v in views if bool(((v.values[m].float() - v.center).abs() < 1e-12).all())]


def choose_rollout(
    correct: list[bool], finished: list[bool], uids: list[str], measured: list[bool] | None
) -> tuple[int, str]:
    """The rollout to show side by side: the first that meets the most of, in order of priority:
    in a mixed group (GRPO and KTAE have a signal), counterfactual spans measured (``measured`` None:
    the counterfactual view was not computed), correct, finished with eos."""
    mixed = set(mixed_groups(uids, correct))
    measured = measured if measured is not None else [False] * len(uids)
    tests = [
        ("is in a mixed group", [u in mixed for u in uids]),
        ("has measured counterfactual spans", list(measured)),
        ("is correct", list(correct)),
        ("finished with eos", list(finished)),
    ]
    best = max(range(len(uids)), key=lambda i: (tuple(t[1][i] for t in tests), -i))
    met = [name for name, flags in tests if flags[best]]
    if not met:
        return best, "the first rollout (none is in a mixed group, correct, finished or measured)"
    said = met[0] if len(met) == 1 else ", ".join(met[:-1]) + " and " + met[-1]
    return best, f"the first rollout that {said}"
