"""The GRPO view of the explain report: the baseline, one outcome advantage z per solution on every token."""

from __future__ import annotations

import torch

from verl_credit.explain.sections import Section, TokenView, Workspace, explainer
from verl_credit.registry import compute_advantages


@explainer("grpo")
def grpo_view(ws: Workspace) -> Section:
    from verl_credit.estimators import GRPO_SPEC

    batch = ws.batch()
    out = compute_advantages(GRPO_SPEC, batch, ws.ctx)
    z = out.advantages[torch.arange(batch.batch_size), 0]
    return Section(
        key="grpo",
        title="GRPO (the baseline)",
        paper="Shao et al., arXiv 2402.03300; verl's algorithm.adv_estimator=grpo",
        description=(
            "Every token of a solution gets the same advantage z = (r - mean) / (std + eps) over its group. "
            "All-correct and all-wrong groups give z = 0: no token learns anything from them."
        ),
        views=[TokenView("GRPO advantage (same for every token)", out.advantages, "A")],
        data={"outcome_advantage": [round(float(v), 6) for v in z]},
    )
