"""The built-in views of the explain report, one module per estimator (Shapes: see
:mod:`verl_credit.explain.sections`).

Each module defines its builder ``fn(ws: Workspace) -> Section`` and registers it with
:func:`verl_credit.explain.sections.explainer`; importing this package imports them in
``REPORT_ORDER``, the order of the report's sections. ``verl_credit.explain.sections`` imports this
package at its end, so importing either registers every built-in view.

    grpo               -- the baseline: one outcome advantage per solution.
    ktae               -- A = z + K, the key tokens of each mixed group.
    counterfactual     -- span importances, A x w for the method and its controls, coverage.
    variance_weighted  -- sigma and weights on the reference answer, R3, the shaped reward.
    length_reward      -- token significance, r_ins, r_sig and the shaping of each rollout.
"""

from __future__ import annotations

import importlib

REPORT_ORDER = ("grpo", "ktae", "counterfactual", "variance_weighted", "length_reward")

for _name in REPORT_ORDER:  # registration order is the report order
    importlib.import_module(f"{__name__}.{_name}")
