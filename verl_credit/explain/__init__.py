"""``verl-credit explain``: sample solutions on a CPU, grade them, and show where each estimator
puts the credit, token by token, in a self-contained HTML report.

Modules:
    options   -- ExplainConfig, the command-line flags, the demo settings (the demo's answer markers).
    run       -- load the model and problems, sample a group per problem, grade, build the sections.
    sections  -- what a view builder receives and returns (Workspace, TokenView, Section), the registry.
    views     -- the built-in builders, one module per estimator, computing through the package's functions.
    coverage  -- which rollouts the counterfactual stage measured, and why not the others.
    compare   -- estimators against each other: the side-by-side rollout, rank correlations, silent views.
    plots     -- matplotlib summary plots (PNG bytes) and the label-collision check.
    markup    -- HTML pieces: escaping, token shading, colour bars, tables.
    blocks    -- the rollout blocks and the side-by-side view.
    report    -- the HTML report and the JSON file of the same numbers.

    from verl_credit.explain import ExplainConfig
    from verl_credit.explain.run import run_explain
    result = run_explain(ExplainConfig(num_problems=2, group_size=4))
"""

from verl_credit.explain.options import ExplainConfig

__all__ = ["ExplainConfig"]
