"""verl_credit: token-level credit assignment for critic-free RL in verl.

Public API:
    register_estimator, get_estimator, list_estimators, compute_advantages  (registry)
    CreditBatch, EstimatorContext, CreditOutput                             (estimator I/O)
    CreditConfig                                                            (the ``credit:`` block)

Importing this package does not import verl; ``verl_credit.integration`` is the only part that
does. The verl entry point is ``verl_credit.plugin``.
"""

from verl_credit.batch import CreditBatch, CreditOutput, EstimatorContext
from verl_credit.config import CreditConfig
from verl_credit.registry import compute_advantages, get_estimator, list_estimators, register_estimator

__version__ = "0.1.0"

__all__ = [
    "CreditBatch",
    "CreditConfig",
    "CreditOutput",
    "EstimatorContext",
    "compute_advantages",
    "get_estimator",
    "list_estimators",
    "register_estimator",
    "__version__",
]
