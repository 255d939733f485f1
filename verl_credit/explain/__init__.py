"""``verl-credit explain``: sample solutions on a CPU, grade them, and show where each estimator
puts the credit, token by token, in a self-contained HTML report.

Modules:
    options   -- ExplainConfig and the command-line flags.
    run       -- load the model and problems, sample a group per problem, grade, build the sections.
    sections  -- one builder per estimator, computing through the package's own functions.
    plots     -- matplotlib summary plots (PNG bytes).
    report    -- the HTML report and the JSON file of the same numbers.

    from verl_credit.explain import ExplainConfig
    from verl_credit.explain.run import run_explain
    result = run_explain(ExplainConfig(num_problems=2, group_size=4))
"""

from verl_credit.explain.options import ExplainConfig

__all__ = ["ExplainConfig"]
