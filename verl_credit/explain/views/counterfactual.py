"""The counterfactual view of the explain report: span importances, A x w for the method and its
three controls, and which rollouts the scoring stage measured."""

from __future__ import annotations

import dataclasses
import math

import torch

from verl_credit.explain.sections import Section, Table, TokenView, Workspace, _estimator, _per_rollout, explainer
from verl_credit.registry import compute_advantages


def _counterfactual_requires() -> str | None:
    try:
        from verl_credit.scoring import score_spans  # noqa: F401
        from verl_credit.weighting import apply_counterfactual_weights  # noqa: F401
    except ImportError as err:
        return str(err)
    return _estimator("counterfactual")()


def _quoted(items) -> str:
    """Markers as the user types them: ``"final answer", "####", "\\boxed{"`` (no repr escapes)."""
    return ", ".join(f'"{m}"' for m in items)


@explainer("counterfactual", requires=_counterfactual_requires)
def counterfactual_view(ws: Workspace) -> Section:
    from verl_credit.core.counterfactual import WEIGHT_MODES, span_importance
    from verl_credit.core.groups import contrast_rows
    from verl_credit.explain.coverage import reason_rows, rollout_coverages, summarize
    from verl_credit.spans import find_spans
    from verl_credit.weighting import apply_counterfactual_weights

    cf = ws.credit.counterfactual
    plain = ws.batch()
    rows = list(range(plain.batch_size))
    if ws.score_rows == "trained":  # the trainer scores only groups with a non-zero outcome advantage
        rows = contrast_rows(plain.scores, plain.groups).nonzero().flatten().tolist()
    ro = ws.rollouts
    found = find_spans(ws.tokenizer, [r.tolist() for r in ro.responses], cf)
    res = ws.span_scores(rows, found)
    fields = {"credit_cf_scores": res.scores, "credit_cf_spans": res.spans, "credit_cf_answer": res.answer}
    batch = ws.batch(fields)
    base = compute_advantages("counterfactual", batch, ws.ctx).advantages.clone()  # GRPO's A, before w
    outputs = {}
    for mode in WEIGHT_MODES:
        out = compute_advantages("counterfactual", batch, ws.ctx)
        outputs[mode] = apply_counterfactual_weights(out, batch, dataclasses.replace(cf, mode=mode), global_step=0)
    D, importance = span_importance(res.scores)
    weights = outputs["counterfactual"].token_weights
    table = []
    for i in range(batch.batch_size):
        for k, kind in enumerate(res.kinds[i]):
            s0, s1 = (int(x) for x in res.spans[i, k])
            if s0 < 0 or math.isnan(float(D[i, k])):
                continue
            text = "".join(ws.pieces[i][s0:s1])
            table.append(
                [
                    f"{ro.uids[i]}.{i}",
                    k + 1,
                    kind,
                    text,
                    round(float(D[i, k]), 4),
                    round(float(importance[i, k]), 3),
                    round(float(weights[i, s0]), 3),
                    "yes" if float(D[i, k]) > 0 else "",
                ]
            )
    gold = cf.answer_source == "gold"
    coverage = rollout_coverages(ws.tokenizer, ro, found, cf, set(rows), gold, ws.max_new_tokens)
    for i, c in enumerate(coverage):  # the detection and the stage's scores must tell the same story
        if c.measured != bool((~torch.isnan(D[i])).any()):
            raise RuntimeError(f"explain: rollout {i}: span detection says {c.status!r}, the scores disagree")
    measured = sum(c.measured for c in coverage)
    titles = {
        "counterfactual": "A x w, counterfactual weights (the method)",
        "uniform": "A x w, control: uniform (every weight 1, plain GRPO/DAPO)",
        "random": "A x w, control: random importances (seeded)",
        "inverted": "A x w, control: inverted importances (1 - I)",
    }
    views = [
        TokenView(
            titles[m],
            outputs[m].advantages,
            "A x w",
            open=(m == "counterfactual"),
            short=m,
            parts={"A": base, "w": outputs[m].token_weights},
        )
        for m in WEIGHT_MODES
    ]
    metrics = dict(outputs["counterfactual"].metrics)
    metrics.update(
        {
            "counterfactual/rollouts_with_answer/count": float((res.answer[:, 0] >= 0).sum()),
            "counterfactual/rollouts_with_spans_measured/count": float(measured),
            "counterfactual/forward_tokens/count": float(res.forward_tokens),
            "counterfactual/forward_tokens_vs_naive/ratio": res.forward_tokens / max(1, res.naive_tokens),
        }
    )
    counts = summarize(coverage)
    markers = _quoted([*cf.answer_markers, cf.boxed_marker])
    reasons = reason_rows(coverage, [f"{u}.{i}" for i, u in enumerate(ro.uids)])
    return Section(
        key="counterfactual",
        title="Counterfactual span importance",
        paper="Khandoga et al., arXiv 2602.09331; algorithm.adv_estimator=counterfactual",
        description=(
            "Each reasoning span (calculation, sentence) is overwritten in place by a placeholder and the answer's "
            "log-probability is scored again: D = S(without span) - S(original). Spans whose removal hurts the "
            f"answer (D < 0) are critical and get weights up to w_max = {cf.w_max}; D > 0 marks a distractor. "
            f"Answer tokens get {cf.answer_weight}, other tokens 1"
            + (
                " (then each rollout's weights are rescaled to mean 1: conserve_gradient)"
                if cf.conserve_gradient
                else ""
            )
            + ". The token views show the advantage the loss sees, A x w (GRPO's A times the weight; hover for "
            "both): on a wrong rollout A < 0, so a larger weight means more blame (deeper red). The three "
            "controls of the paper's ablation are shown below the method."
        ),
        views=views,
        tables=[
            Table(
                f"Which rollouts were measured: {measured} of {len(ro)}",
                ["status", "reason", "count", "rollouts"],
                reasons,
                note=(
                    f"Answer markers: {markers} (the last one that only answer material follows); answer source: "
                    f"{cf.answer_source}. Read off the stage's own span detection (verl_credit.spans.find_spans). "
                    "A rollout without measured spans keeps weight 1 on its reasoning tokens."
                ),
            ),
            Table(
                "Spans (measured rollouts)",
                ["rollout", "span", "kind", "text", "D", "importance", "weight", "distractor"],
                table,
            ),
        ],
        metrics=metrics,
        data={
            "scores": [[None if math.isnan(v) else round(v, 6) for v in row.tolist()] for row in res.scores],
            "D": [[None if math.isnan(v) else round(v, 6) for v in row.tolist()] for row in D],
            "weights": {m: _per_rollout(outputs[m].token_weights, batch.response_mask) for m in WEIGHT_MODES},
            "advantages": {m: _per_rollout(outputs[m].advantages, batch.response_mask) for m in WEIGHT_MODES},
            "spans": res.spans.tolist(),
            "answer": res.answer.tolist(),
            "rows_asked": rows,
            "coverage": [dataclasses.asdict(c) for c in coverage],
            "measured": measured,
            "coverage_counts": counts,
            "answer_markers": [*cf.answer_markers, cf.boxed_marker],
        },
    )
