"""The KTAE view of the explain report: A = z + K and the key tokens of each mixed group."""

from __future__ import annotations

from verl_credit.explain.sections import Section, Table, TokenView, Workspace, _estimator, _per_rollout, explainer
from verl_credit.registry import compute_advantages


@explainer("ktae", requires=_estimator("ktae"))
def ktae_view(ws: Workspace) -> Section:
    batch = ws.batch()
    out = compute_advantages("ktae", batch, ws.ctx)
    K = out.diagnostics["key_token_values"]
    z = out.diagnostics["outcome_advantage"]
    correct, groups = ws.correct, batch.groups
    rows = []
    for g, uid in enumerate(groups.uids):
        members = (groups.group == g).nonzero().flatten().tolist()
        C = int(correct[members].sum())
        W = len(members) - C
        if C == 0 or W == 0:
            continue
        value: dict[int, float] = {}  # K of each token id in this group (the same at every occurrence)
        holders: dict[int, set[int]] = {}  # rollouts that contain it
        for i in members:
            valid = batch.response_mask[i].bool()
            for tok, k in zip(batch.responses[i][valid].tolist(), K[i][valid].tolist(), strict=True):
                value.setdefault(tok, k)
                holders.setdefault(tok, set()).add(i)
        ranked = sorted(value, key=lambda t: -value[t])
        positive = [t for t in ranked if value[t] > 0][:5]
        negative = [t for t in reversed(ranked) if value[t] < 0][:5]
        for tok in positive + negative:
            a = sum(1 for i in holders[tok] if correct[i])
            shown = repr(ws.tokenizer.decode([tok]))
            rows.append([uid, shown, round(value[tok], 4), f"{a}/{C}", f"{len(holders[tok]) - a}/{W}"])
    return Section(
        key="ktae",
        title="KTAE: key-token advantage",
        paper="Sun et al., arXiv 2505.16826 (NeurIPS 2025); algorithm.adv_estimator=ktae",
        description=(
            "A = z + K(token): per group, a token id that appears in the correct solutions more than in the wrong "
            "ones (Fisher exact test, information gain, frequency ratio) gets K > 0 at every occurrence, the "
            "reverse K < 0. K is 0 in all-correct or all-wrong groups and for pad/eos ids."
        ),
        views=[
            TokenView("KTAE advantage A = z + K", out.advantages, "A", open=True),
            TokenView("key-token value K alone", K, "K"),
        ],
        tables=[
            Table(
                "Key tokens of each mixed group (the 5 largest and the 5 most negative K)",
                ["group", "token", "K", "in correct", "in wrong"],
                rows,
                note="" if rows else "No group has both correct and wrong solutions: every K is 0.",
            )
        ],
        metrics=dict(out.metrics),
        data={
            "advantages": _per_rollout(out.advantages, batch.response_mask),
            "key_token_values": _per_rollout(K, batch.response_mask),
            "outcome_advantage": [round(float(v), 6) for v in z],
        },
    )
