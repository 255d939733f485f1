"""The gym's method grammar: ``name[:mode][+option]...`` -> :class:`Method`.

Public API:
    Method                  -- one gym entry (advantage estimator, its mode, the options).
    parse_method(text)      -- the text a user writes -> Method (ValueError / KeyError naming the part).
    PEERS                   -- the gym's own method names besides the registry's (``grpo`` and peers).
    GYM_FIELDS              -- the estimator fields the gym can pass (``registry.OPTIONAL_FIELDS`` but ``values``).

Grammar (``+`` separates options, ``:`` a name from its arguments):

    name:  grpo | <registered estimator> | counterfactual[:counterfactual|uniform|random|inverted]
         | oracle[:variant] | anti_oracle[:variant]    (ground truth, ``gym.oracle``; variant items
                                                       mean1|mask|floorF|fmtF|clipC|persign)
         | rloo                      (verl's ``compute_rloo_outcome_advantage``)
         | optimal_token_baseline    (verl's ``compute_optimal_token_baseline_advantage``; sum pi^2 from
                                      the gym's old-log-prob forward, which has the full logits)
         | entropy80[:q[:all|kept]]  (= grpo+entropy80[:q[:denominator]])
         | clip_cov[:ratio] | kl_cov[:ratio]   (= grpo+clip_cov / grpo+kl_cov)
    options (each at most once):
         +qp, +rb                    query-preserved mini-batches, reward-balanced group selection
         +lr[:first_seen|group]      the length reward (Bingo) before the estimator
         +entropy80[:q[:all|kept]]   the high-entropy token filter after the estimator (default q 0.2,
                                      denominator "all"; ``core.token_filter``)
         +clip_cov[:ratio], +kl_cov[:ratio]   verl's Clip-Cov / KL-Cov policy loss instead of vanilla PPO
                                      (ratio = ``clip_cov_ratio`` / ``kl_cov_ratio``, default verl's 0.0002;
                                      other coefficients verl's ``PolicyLossConfig`` defaults)
         +m1                         the method's token weights rescaled to mean 1 over each rollout's
                                      valid tokens (a token weighting only: counterfactual, oracle,
                                      anti_oracle, the entropy filter, or an estimator returning
                                      ``token_weights``; grpo, rloo, optimal_token_baseline, ktae and
                                      variance_weighted without a filter are refused)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from verl_credit.config import CreditConfig
from verl_credit.core.length_reward import ANCHORS
from verl_credit.core.token_filter import DENOMINATORS
from verl_credit.gym.oracle import ORACLES, OracleSpec, parse_variant
from verl_credit.registry import OPTIONAL_FIELDS, get_estimator, list_estimators

__all__ = ["Method", "parse_method", "PEERS", "GYM_FIELDS", "DEFAULT_ENTROPY_QUANTILE", "LOSS_MODES"]

VERL_ESTIMATORS = ("rloo", "optimal_token_baseline")
LOSS_MODES = ("clip_cov", "kl_cov")
FILTER = "entropy80"
PEERS = ("grpo", *ORACLES, *VERL_ESTIMATORS, FILTER, *LOSS_MODES)
OPTIONS = ("qp", "rb", "lr", FILTER, *LOSS_MODES, "m1")
DEFAULT_ENTROPY_QUANTILE = 0.2  # the paper's top 20%
NOT_WEIGHTINGS = ("grpo", *VERL_ESTIMATORS, "ktae", "variance_weighted")
# a critic's values: the gym has no critic, so an estimator that declares them cannot run here
GYM_FIELDS = frozenset(OPTIONAL_FIELDS - {"values"})


@dataclass(frozen=True)
class Method:
    """label: as written; estimator: a registry name, "grpo", "oracle", "anti_oracle", "rloo" or
    "optimal_token_baseline"; cf_mode: the counterfactual mode (None unless counterfactual);
    query_preserved / reward_balanced: batching; length_reward: the anchor with ``+lr`` else None;
    oracle: the oracle's OracleSpec else None; entropy_quantile / entropy_denominator: the token filter
    (None without it); loss_mode: "vanilla", "clip_cov" or "kl_cov"; loss_ratio: clip_cov_ratio /
    kl_cov_ratio (None: verl's default); mean1: ``+m1``."""

    label: str
    estimator: str
    cf_mode: str | None = None
    query_preserved: bool = False
    reward_balanced: bool = False
    length_reward: str | None = None
    oracle: OracleSpec | None = None
    entropy_quantile: float | None = None
    entropy_denominator: str = "all"
    loss_mode: str = "vanilla"
    loss_ratio: float | None = None
    mean1: bool = False

    @property
    def credit_label(self) -> str:
        """The label without the learning-only options (+qp, +rb, +lr, the loss modes): what changes
        token credit (measurement 1 scores this form)."""
        head, *flags = self.label.split("+")
        if head.split(":")[0] in LOSS_MODES:
            head = "grpo"
        keep = [f for f in flags if f.split(":")[0] in (FILTER, "m1")]
        return "+".join([head, *keep])


def _number(text: str, what: str, low: float, high: float, low_open: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not (low < value <= high if low_open else low <= value <= high):
        raise ValueError(f"{what} must lie in {'(' if low_open else '['}{low:g}, {high:g}], got {text}")
    return value


def _entropy(args: list[str]) -> tuple[float, str]:
    """``[q[:denominator]]`` -> (quantile, denominator)."""
    if len(args) > 2:
        raise ValueError(f"{FILTER} takes at most two arguments (quantile, denominator), got {':'.join(args)!r}")
    q = _number(args[0], f"{FILTER} quantile", 0.0, 1.0) if args and args[0] else DEFAULT_ENTROPY_QUANTILE
    denominator = args[1] if len(args) > 1 else "all"
    if denominator not in DENOMINATORS:
        raise ValueError(f"{FILTER} denominator must be one of {', '.join(DENOMINATORS)}, got {denominator!r}")
    return q, denominator


def _loss(name: str, args: list[str]) -> float | None:
    if len(args) > 1:
        raise ValueError(f"{name} takes one argument (its ratio), got {':'.join(args)!r}")
    return _number(args[0], f"{name} ratio", 0.0, 1.0) if args and args[0] else None


def parse_method(text: str) -> Method:
    """The grammar of the module docstring -> Method. KeyError (listing them) for an unknown estimator;
    ValueError ``gym --estimators '<text>': ...`` naming the option or argument otherwise."""
    try:
        return _parse(text)
    except ValueError as err:
        raise ValueError(f"gym --estimators {text!r}: {err}") from None


def _parse(text: str) -> Method:
    head, *flags = text.split("+")
    values: dict = {}
    seen: set[str] = set()
    for flag in flags:
        option, *args = flag.split(":")
        if option not in OPTIONS:
            raise ValueError(f"unknown method option {flag!r}; known: {', '.join(OPTIONS)} (see --help)")
        if option in seen:
            raise ValueError(f"option '+{option}' given twice")
        seen.add(option)
        if option in ("qp", "rb", "m1") and args:
            raise ValueError(f"unknown method option {flag!r}: +{option} takes no argument")
        if option == "qp":
            values["query_preserved"] = True
        elif option == "rb":
            values["reward_balanced"] = True
        elif option == "m1":
            values["mean1"] = True
        elif option == "lr":
            if len(args) > 1:
                raise ValueError(f"+lr takes one anchor ({', '.join(ANCHORS)}), got {':'.join(args)!r}")
            default = CreditConfig().length_reward  # the config validates the anchor and names the option
            values["length_reward"] = dataclasses.replace(default, anchor=args[0]).anchor if args else default.anchor
        elif option == FILTER:
            values["entropy_quantile"], values["entropy_denominator"] = _entropy(args)
        else:
            if "loss_mode" in values:
                raise ValueError(f"one policy loss per method: +{values['loss_mode']} and +{option}")
            values["loss_mode"], values["loss_ratio"] = option, _loss(option, args)
    name, *mode = head.split(":")
    if name in PEERS and name in list_estimators():
        raise ValueError(f"{name!r} is a gym method and also a registered estimator; rename the estimator")
    estimator = name
    if name in ORACLES:
        values["oracle"] = parse_variant(":".join(mode))
        if "length_reward" in values:  # the oracle reads correctness off the reward, which +lr reshapes
            raise ValueError(f"{name} reads each rollout's correctness from its 0/1 reward; +lr reshapes it (refused)")
    elif name == FILTER:
        if "entropy_quantile" in values:
            raise ValueError(f"option '+{FILTER}' given twice")
        values["entropy_quantile"], values["entropy_denominator"] = _entropy(mode)
        estimator = "grpo"
    elif name in LOSS_MODES:
        if "loss_mode" in values:
            raise ValueError(f"one policy loss per method: {name} and +{values['loss_mode']}")
        values["loss_mode"], values["loss_ratio"] = name, _loss(name, mode)
        estimator = "grpo"
    else:
        if name not in PEERS:
            spec = get_estimator(name)
            missing = sorted(set(spec.fields) - GYM_FIELDS)
            if missing:
                raise ValueError(
                    f"estimator {name!r} declares field {missing[0]!r} (a critic's values), which the gym cannot "
                    "pass: it has no critic"
                )
        if mode and name != "counterfactual":
            raise ValueError(
                "a ':mode' suffix is only for counterfactual, oracle, anti_oracle, entropy80, clip_cov and kl_cov"
            )
        if name == "counterfactual":
            values["cf_mode"] = mode[0] if mode else "counterfactual"
            if len(mode) > 1:
                raise ValueError(f"counterfactual takes one mode, got {':'.join(mode)!r}")
            CreditConfig().counterfactual.__class__(mode=values["cf_mode"])  # validates the mode
    if values.get("mean1") and estimator in NOT_WEIGHTINGS and values.get("entropy_quantile") is None:
        raise ValueError(
            f"+m1 rescales token weights to mean 1 per rollout and {estimator} has none (not a token weighting); "
            "use it with counterfactual, oracle, anti_oracle, entropy80 or an estimator returning token_weights"
        )
    return Method(text, estimator, **values)
