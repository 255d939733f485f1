"""The variance-weighted view of the explain report: sigma and the weights on each group's
reference answer, R3 and the shaped reward r' of each rollout, with their ranks in the group."""

from __future__ import annotations

import torch

from verl_credit.explain.sections import (
    Section,
    Table,
    TokenStrip,
    TokenView,
    Workspace,
    _estimator,
    _per_rollout,
    explainer,
    token_pieces,
)
from verl_credit.registry import compute_advantages


def _variance_requires() -> str | None:
    try:
        from verl_credit.scoring import score_reference  # noqa: F401
    except ImportError as err:
        return str(err)
    return _estimator("variance_weighted")()


def _group_ranks(values: torch.Tensor, group: torch.Tensor) -> list[int]:
    """Rank of each value inside its group: 1 = the largest; ties share the best rank."""
    v, g = values.float().tolist(), group.tolist()
    return [1 + sum(1 for j in range(len(v)) if g[j] == g[i] and v[j] > v[i]) for i in range(len(v))]


@explainer("variance_weighted", requires=_variance_requires)
def variance_view(ws: Workspace) -> Section:
    from verl_credit.scoring import score_reference

    params = ws.credit.variance
    ro = ws.rollouts
    refs, marks = ws.reference_answers(params.answer_template)
    logprobs, mask, forward = score_reference(
        ws.tokenizer,
        ws.score_fn,
        ro.prompts,
        ro.responses,
        refs,
        list(range(len(ro))),
        ws.ctx.config.counterfactual,
        answer_masks=marks,
    )
    batch = ws.batch({"credit_ref_logprobs": logprobs, "credit_ref_mask": mask})
    out = compute_advantages("variance_weighted", batch, ws.ctx)
    sigma, weights = out.diagnostics["sigma"], out.diagnostics["reference_weights"]
    r3, shaped = out.diagnostics["r3"], out.diagnostics["shaped_reward"]
    groups = batch.groups
    strips, ref_data = [], {}
    center = 1.0 if params.weighting == "linear" else 0.5
    for g, uid in enumerate(groups.uids):
        first = int((groups.group == g).nonzero()[0])
        J = int(refs[first].numel())  # every teacher-forced token; the template's are context (sigma 0)
        scored = marks[first].tolist()
        pieces = token_pieces(ws.tokenizer, refs[first].tolist())[:J]
        ref_data[uid] = {
            "tokens": pieces,
            "scored": scored,
            "sigma": [round(float(v), 6) for v in sigma[g, :J]],
            "weights": [round(float(v), 6) for v in weights[g, :J]],
        }
        strips.append(
            TokenStrip(
                f"group {uid}: reference answer {''.join(pieces)!r}"
                + ("" if bool(out.diagnostics["sigma"][g].abs().sum() > 0) else " (no contrast: R3 = 0)"),
                pieces,
                [
                    float(v) if scored[j] else center for j, v in enumerate(weights[g, :J].tolist())
                ],  # context: no colour
                [
                    f"sigma {float(sigma[g, j]):.4f}, weight {float(weights[g, j]):.3f}"
                    if scored[j]
                    else "template: context, not scored"
                    for j in range(J)
                ],
                center=center,
            )
        )
    r3_rank, shaped_rank = _group_ranks(r3, groups.group), _group_ranks(shaped, groups.group)
    table = [
        [
            f"{ro.uids[i]}.{i}",
            float(batch.scores[i]),
            round(float(r3[i]), 4),
            r3_rank[i],
            round(float(shaped[i]), 4),
            shaped_rank[i],
            round(float(out.advantages[i, 0]), 4),
        ]
        for i in range(len(ro))
    ]
    metrics = dict(out.metrics)
    metrics["variance/forward_tokens/count"] = float(forward)
    return Section(
        key="variance_weighted",
        title="Variance-weighted reward (DRO's R3)",
        paper="Xu et al., arXiv 2506.13351; algorithm.adv_estimator=variance_weighted",
        description=(
            f"The reference answer ({params.answer_template!r}) is teacher-forced after each solution's reasoning; "
            "only the answer's own tokens are scored (the template is context). "
            "Answer tokens whose log-probability varies across the group's solutions (high sigma) reflect the "
            f"reasoning and carry the weight ({params.weighting}). R3 is the weighted mean log-probability. "
            + (
                "Shaping within_class: R3 is z-scored inside each outcome class and bounded by "
                f"{params.r3_coef} x half the gap between the correct and the wrong rewards of the group, so it "
                "reorders solutions inside a class, never a wrong one above a correct one; all-correct or all-wrong "
                "groups still get a signal."
                if params.shaping == "within_class"
                else f"r' = r + {params.r3_coef} * zscore(R3) (shaping unbounded) feeds GRPO, so even all-correct or "
                "all-wrong groups get a signal."
            )
        ),
        views=[TokenView("variance-weighted advantage (GRPO on r')", out.advantages, "A")],
        strips=strips,
        tables=[
            Table(
                "Rollouts",
                ["rollout", "reward r", "R3", "R3 rank", "shaped r'", "r' rank", "advantage"],
                table,
                note="Ranks inside the group, 1 = the largest (ties share the best rank).",
            )
        ],
        metrics=metrics,
        data={
            "reference": ref_data,
            "r3": [round(float(v), 6) for v in r3],
            "shaped_reward": [round(float(v), 6) for v in shaped],
            "r3_rank": r3_rank,
            "shaped_rank": shaped_rank,
            "advantages": _per_rollout(out.advantages, batch.response_mask),
        },
    )
