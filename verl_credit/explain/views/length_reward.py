"""The length-reward view of the explain report: each token's normalised significance, and per
rollout the token counts, r_ins, r_sig and the shaping (lambda_dyn at step 0)."""

from __future__ import annotations

import torch

from verl_credit.explain.sections import Section, Table, TokenView, Workspace, _per_rollout, explainer


def _length_requires() -> str | None:
    try:
        from verl_credit.core.length_reward import compute_length_reward  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


@explainer("length_reward", requires=_length_requires)
def length_reward_view(ws: Workspace) -> Section:
    from verl_credit.core.counterfactual import STAGE_FIELDS
    from verl_credit.core.groups import multi_rollout_rows
    from verl_credit.core.length_reward import (
        DynamicLambdaSchedule,
        ScorerInputs,
        compute_length_reward,
        length_reward_metrics,
        resolve_scorer,
        run_scorer,
    )

    lr = ws.credit.length_reward
    scorer = resolve_scorer(lr.scorer)
    batch = ws.batch()
    available = {"responses": batch.responses}
    if "old_log_probs" in scorer.fields:  # what verl's actor computes before the advantage step
        ro = ws.rollouts
        seqs = [torch.cat([p, r]) for p, r in zip(ro.prompts, ro.responses, strict=True)]
        targets = torch.tensor([[p.numel(), s.numel()] for p, s in zip(ro.prompts, seqs, strict=True)])
        old = torch.zeros(batch.responses.shape)
        for i, lp in enumerate(ws.score_fn(seqs, targets)):
            old[i, : lp.numel()] = lp
        available["old_log_probs"] = old
    if scorer.stage == "counterfactual":  # the trainer's rule with the length reward on: groups of >= 2
        rows = multi_rollout_rows(batch.groups).nonzero().flatten().tolist()
        res = ws.span_scores(rows)
        available.update(zip(STAGE_FIELDS, (res.scores, res.spans, res.answer), strict=True))
    inputs = ScorerInputs(
        response_mask=batch.response_mask,
        fields={f: available[f] for f in scorer.all_fields},
        correct=ws.correct,
        groups=batch.groups,
        ktae_params=ws.credit.ktae.with_special_ids(ws.ctx.special_token_ids),
        tokenizer=ws.tokenizer,
    )
    significance = run_scorer(scorer, inputs)
    lambda_dyn = DynamicLambdaSchedule(lr).value_at(0)
    res = compute_length_reward(
        significance,
        batch.token_level_rewards,
        batch.response_mask,
        batch.groups,
        lr,
        lambda_dyn,
        correct_threshold=ws.credit.correct_threshold,
        normalize=scorer.normalize,
    )
    table = [
        [
            f"{ws.rollouts.uids[i]}.{i}",
            int(res.lengths[i]),
            int(res.n_insig[i]),
            int(res.n_sig[i]),
            round(float(res.r_ins[i]), 3),
            round(float(res.r_sig[i]), 3),
            float(res.outcome[i]),
            round(float(res.shaping[i]), 3),
            round(float(res.outcome[i] + res.shaping[i]), 3),
        ]
        for i in range(batch.batch_size)
    ]
    return Section(
        key="length_reward",
        title=f"Significance-aware length reward (Bingo), scorer '{lr.scorer}'",
        paper="Liu et al., arXiv 2506.08125; credit.length_reward.enabled=true (composes with any estimator)",
        description=(
            f"Token significance from the '{lr.scorer}' scorer"
            + (", min-max normalised per solution" if scorer.normalize else " (already in [0, 1])")
            + f"; below "
            f"{lr.threshold} a token is insignificant (red). "
            + (
                "The reference counts are each prompt's first-seen anchor (anchor=first_seen): here, the first "
                "sight, the mean over all of the group's solutions, kept for later visits in training; "
                if lr.anchor == "first_seen"
                else "The group's correct solutions give the reference counts (anchor=group); "
            )
            + f"a correct solution gains up to {lr.lambda_c} when it has fewer insignificant tokens than the "
            f"reference, a wrong one loses up to {lr.lambda_wn} + {lr.lambda_we} (lambda_dyn = {lambda_dyn:.3f} "
            "at step 0)."
        ),
        views=[
            TokenView(
                f"significance (normalised {lr.scorer} score; threshold {lr.threshold})",
                res.normalized.float(),
                "s",
                center=lr.threshold,
                scale="significance",
            )
        ],
        tables=[
            Table(
                "Rollouts",
                ["rollout", "tokens", "insignificant", "significant", "r_ins", "r_sig", "reward", "shaping", "shaped"],
                table,
            )
        ],
        metrics=length_reward_metrics(res),
        data={
            "significance": _per_rollout(res.normalized, batch.response_mask),
            "shaping": [round(float(v), 6) for v in res.shaping],
            "lambda_dyn": lambda_dyn,
        },
    )
