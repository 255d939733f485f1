"""``verl-credit gym``: a laptop-sized benchmark of token-level credit assignment.

Modules: ``task`` (seeded arithmetic language with token labels), ``model`` (tiny Qwen2 + SFT warm
start, the old-log-prob forward's statistics), ``rollout`` (sampling, grading, estimators called as the
verl integration calls them), ``methods`` (the method grammar), ``oracle`` (ground-truth bounds),
``compose`` (verl's peers, the entropy filter, ``+m1``, the fields the trainer passes), ``credit``
(measurement 1: AUC of causal vs filler tokens), ``learn`` (measurement 2: a small PPO loop with verl's
policy loss), ``endpoints`` (AUC, paired differences, credit efficiency, the validity check), ``report``
(markdown, JSON, PNGs), ``defaults`` (defaults the CLI's help needs), ``cli`` (``run(args)``).
"""
