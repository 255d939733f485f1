"""``verl-credit gym``: a laptop-sized benchmark of token-level credit assignment.

Modules: ``task`` (seeded arithmetic language with token labels), ``model`` (tiny Qwen2 + SFT warm
start), ``rollout`` (sampling, grading, estimators called as the verl integration calls them),
``credit`` (measurement 1: AUC of causal vs filler tokens), ``learn`` (measurement 2: a small PPO
loop with verl's policy loss), ``report`` (markdown, JSON, PNGs), ``cli`` (``run(args)``).
"""
