"""Significance-aware length reward (Bingo, Liu et al., arXiv 2506.08125) without an external model.

Public API:
    LengthRewardConfig                 -- the ``credit.length_reward`` block (schema, defaults, checks).
    ScorerInputs, SignificanceScorer   -- what a significance scorer receives / declares.
    significance_scorer(fields, normalize)  -- decorator: a function -> SignificanceScorer.
    register_scorer, get_scorer, list_scorers, resolve_scorer, run_scorer
    minmax_normalize(scores, mask)                       (B, T) -> (B, T)
    significance_counts(normalized, mask, threshold)     (B, T) -> (B,), (B,), (B, T)
    group_reference_counts(n_insig, n_sig, correct, nonempty, groups)   (B,) -> (B,), (B,)
    group_reference_counts_loop(...)                     the same, one Python iteration per group
    prompt_keys(prompts)               -- a stable key per rollout: a hash of its prompt token ids.
    PromptAnchors                      -- first-seen reference counts per prompt (LRU-bounded, state_dict).
    first_seen_reference_counts(n_insig, n_sig, nonempty, groups, keys, anchors)  (B,) -> (B,), (B,), (G,)
    first_seen_reference_counts_loop(...)                the same, one Python iteration per group
    significance_ratios(n_insig, n_sig, ref_insig, ref_sig)             -> r_ins (B,), r_sig (B,)
    length_reward_shaping(r_ins, r_sig, correct, nonempty, ...)         -> (B,)
    add_on_last_token(rm_scores, mask, shaping)          (B, T) -> (B, T)
    compute_length_reward(...)         -- everything above in one call -> LengthRewardResult.
    length_reward_metrics(result)      -- scalar metrics ``length_reward/<quantity>/<stat>``.
    DynamicLambdaSchedule              -- lambda_dyn over training, ``state_dict``/``load_state_dict``.

Notation: B rollouts (verl's padding rows included), T response positions, G groups (rollouts of
one prompt, verl ``uid``). s_it is a scorer's significance score of valid token t of rollout i
(higher = more significant), r_i the outcome reward (sum of ``rm_scores``), "correct" means
r_i > ``credit.correct_threshold``.

    s^_it    = (s_it - min_t s_it) / (max_t s_it - min_t s_it)  over the valid tokens of rollout i
               (1 for every token when max == min; skipped when the scorer declares normalize=False)
    insignificant: s^_it < threshold;  significant: s^_it >= threshold   (valid tokens only)
    N_insig_i, N_sig_i = counts of insignificant / significant tokens of rollout i
    reference counts (``anchor``):
      first_seen (default): N_insig_ref_g, N_sig_ref_g = mean over the non-empty rollouts (correct or
               not) of the first group seen with g's prompt (key: a hash of the prompt token ids),
               kept per prompt (LRU, ``anchor_capacity``) and saved with the checkpoint
      group:   R_g = the non-empty correct rollouts of group g if there is one, else all its non-empty
               rollouts;  N_insig_ref_g = mean_{j in R_g} N_insig_j,  N_sig_ref_g = mean_{j in R_g} N_sig_j
    r_ins_i  = N_insig_i / N_insig_ref_g(i),  r_sig_i = N_sig_i / N_sig_ref_g(i);
               both 0 when N_insig_ref == 0 or N_sig_ref == 0 (the authors' code) or rollout i is empty
    shaping  correct:   d_i = lambda_c cos(clip(r_ins_i, 0, pi/2))                        in [0, lambda_c]
             incorrect: d_i = min(0, lambda_wn (cos(clip(r_ins_i, 0, pi/2)) - 1)
                                     + lambda_dyn r_sig_i - lambda_we)                    <= 0
             empty rollouts and padding rows: d_i = 0 (there is no token to carry it)
    rm_scores'[i, last valid t] = rm_scores[i, last valid t] + d_i

The paper's reference counts come from one extra response per prompt sampled from the frozen
reference policy and scored by LLMLingua-2, so the anchor stays put while the policy compresses
its answers. Here no extra generation and no external model is needed: ``first_seen`` takes the
mean counts of the policy's rollouts the first time a prompt is seen (the policy of that time
stands in for the reference model; the mean over the group, correct or not, estimates one
reference sample with less noise) and keeps them; ``group`` takes them from the current group
(mean over its correct rollouts, else over all), an anchor that moves with the policy: a lone
correct rollout always gets r_ins = 1. r_sig is N_sig / N_sig_ref exactly as the authors'
``high_to_ref_high_ratio``. Because d >= 0 for correct and d <= 0 for incorrect rollouts, shaping
never moves a rollout across ``correct_threshold``.

"Correct": the authors count only a score of exactly 1 as correct (``score == 1``); here it is
r_i > ``credit.correct_threshold`` (default 0), which is the same for 0/1 rewards. With graded
rewards (e.g. 0.5 for a well-formatted wrong answer) set the threshold between the wrong and the
right scores: every rollout above it gets the correct-rollout bonus.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from verl_credit.core.checks import is_int, is_number
from verl_credit.core.counterfactual import STAGE_FIELDS, token_significance
from verl_credit.core.groups import PADDING_UID_PREFIX, GroupIndex, group_sum
from verl_credit.core.ktae import KTAEParams, key_token_values

__all__ = [
    "ANCHORS",
    "BUILTIN_SCORERS",
    "DynamicLambdaSchedule",
    "LengthRewardConfig",
    "LengthRewardResult",
    "ScorerInputs",
    "SignificanceScorer",
    "PromptAnchors",
    "add_on_last_token",
    "compute_length_reward",
    "first_seen_reference_counts",
    "first_seen_reference_counts_loop",
    "get_scorer",
    "group_reference_counts",
    "group_reference_counts_loop",
    "length_reward_metrics",
    "length_reward_shaping",
    "list_scorers",
    "minmax_normalize",
    "prompt_keys",
    "register_scorer",
    "resolve_scorer",
    "run_scorer",
    "significance_counts",
    "significance_ratios",
    "significance_scorer",
]

HALF_PI = math.pi / 2
SCHEDULES = ("bingo", "constant")
ANCHORS = ("first_seen", "group")
SCORER_STAGES = (None, "counterfactual")


# --------------------------------------------------------------------------------------- config


@dataclass
class LengthRewardConfig:
    """Options of the significance-aware length reward: the ``credit.length_reward`` block.

    Attributes:
        enabled: bool, default False. Shape the outcome reward of every rollout before any
            advantage estimator runs (composes with grpo, ktae and the other estimators).
        scorer: str, default "surprisal". Where the per-token significance comes from:
            "surprisal": -log pi_old of each token (the trainer's ``old_log_probs``), min-max
            normalised per response; predictable tokens are insignificant.
            "ktae": |K| of the token (KTAE's key-token value, options from ``credit.ktae``).
            "counterfactual": the span importances I_hat of the counterfactual scoring stage (the
            trainer then runs that stage on every rollout of a group with >= 2 rollouts, span
            settings from ``credit.counterfactual``); every token outside a measured span (the
            answer, text between spans, all of a rollout the stage could not score) is
            insignificant (see ``core.counterfactual.token_significance``).
            "module.path:function": a user scorer loaded with importlib (e.g. an LLMLingua-2
            wrapper); a plain callable or one decorated with ``significance_scorer``.
        threshold: float in [0, 1], default 0.5 (the authors' script). A token whose normalised
            score is < threshold is insignificant, otherwise significant.
        lambda_c: float >= 0, default 5. Weight of the bonus of correct rollouts.
        lambda_wn: float >= 0, default 2. Weight of the insignificant-length term of incorrect ones.
        lambda_we: float >= 0, default 5. Constant penalty of incorrect rollouts; also sets the
            schedule's scale: lambda_dyn starts at lambda_we / (pi/2).
        schedule: str, default "bingo". How lambda_dyn moves: "bingo" is the authors' slope rule
            (:class:`DynamicLambdaSchedule`); "constant" keeps lambda_dyn = lambda_we / (pi/2)
            (the authors' non-dynamic variant).
        slope_start_step: int >= 1, default 50. First training step after which the score slope
            is measured (the authors' ``slope_start_epoch``).
        slope_period: int >= 2, default 10. Number of most recent steps the slope is fitted on.
        slope_threshold: float, default 2.5. lambda_dyn turns to a penalty when the scaled slope
            is <= this (the scale maps the first measured slope to lambda_we / (pi/2)).
        penalty_step: float > 0, default 0.5. lambda_dyn = -penalty_step * k after k consecutive
            flat steps, floored at -2 lambda_we / (pi/2).
        anchor: str, default "first_seen". Where the reference counts N_insig_ref, N_sig_ref of
            r_ins = N_insig / N_insig_ref and r_sig = N_sig / N_sig_ref come from.
            "first_seen": the mean counts of the non-empty rollouts (correct or not) of the first
            group seen with the same prompt (keyed by a hash of the prompt token ids: verl's uid
            changes every step), kept and saved with verl's checkpoint. The anchor does not move
            with the policy, as the authors' frozen reference model: a rollout that compresses its
            answer below what the policy wrote at first sight earns more bonus, also when it is
            the only correct rollout of its group. On a prompt's first sight it is the group's own
            mean, so a batch of new prompts still gets a contrast.
            "group": the mean over the group's correct rollouts (else all), recomputed every step:
            the anchor moves with the policy (a lone correct rollout always gets r_ins = 1 and
            the full cos(1) bonus). The previous behaviour, no state.
        anchor_capacity: int >= 1, default 100000. Prompts "first_seen" keeps (least recently
            seen dropped first; ``credit/length_reward/anchor_evictions/count`` counts them, an
            evicted prompt is anchored again when next seen). About 150 bytes each in memory and
            in the checkpoint file; raise it above the number of distinct training prompts.
    """

    enabled: bool = False
    scorer: str = "surprisal"
    threshold: float = 0.5
    lambda_c: float = 5.0
    lambda_wn: float = 2.0
    lambda_we: float = 5.0
    schedule: str = "bingo"
    slope_start_step: int = 50
    slope_period: int = 10
    slope_threshold: float = 2.5
    penalty_step: float = 0.5
    anchor: str = "first_seen"
    anchor_capacity: int = 100_000

    def __post_init__(self):
        key = "credit.length_reward"
        if not isinstance(self.enabled, bool):
            raise ValueError(f"{key}.enabled must be true or false, got {self.enabled!r}")
        if not isinstance(self.scorer, str) or not _valid_scorer_spec(self.scorer):
            raise ValueError(
                f"{key}.scorer must be one of {', '.join(BUILTIN_SCORERS)} or an import path "
                f"'module.path:function', got {self.scorer!r}"
            )
        if not (is_number(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"{key}.threshold must be a number in [0, 1], got {self.threshold!r}")
        for name in ("lambda_c", "lambda_wn", "lambda_we"):
            value = getattr(self, name)
            if not (is_number(value) and value >= 0):
                raise ValueError(f"{key}.{name} must be a finite number >= 0, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{key}.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (is_int(self.slope_start_step) and self.slope_start_step >= 1):
            raise ValueError(f"{key}.slope_start_step must be an integer >= 1, got {self.slope_start_step!r}")
        if not (is_int(self.slope_period) and self.slope_period >= 2):
            raise ValueError(
                f"{key}.slope_period must be an integer >= 2 (a slope needs two points), got {self.slope_period!r}"
            )
        if not is_number(self.slope_threshold):
            raise ValueError(f"{key}.slope_threshold must be a finite number, got {self.slope_threshold!r}")
        if not (is_number(self.penalty_step) and self.penalty_step > 0):
            raise ValueError(f"{key}.penalty_step must be a finite number > 0, got {self.penalty_step!r}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"{key}.anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}")
        if not (is_int(self.anchor_capacity) and self.anchor_capacity >= 1):
            raise ValueError(f"{key}.anchor_capacity must be an integer >= 1, got {self.anchor_capacity!r}")


def _valid_scorer_spec(spec: str) -> bool:
    if ":" not in spec:
        return spec.isidentifier()
    module, _, attr = spec.partition(":")
    return all(p.isidentifier() for p in module.split(".")) and all(p.isidentifier() for p in attr.split("."))


# -------------------------------------------------------------------------------------- scorers


@dataclass(frozen=True)
class ScorerInputs:
    """What a significance scorer receives.

    Attributes:
        response_mask: LongTensor[B, T], 1 on valid response tokens.
        fields: the batch fields the scorer declared, name -> Tensor[B, ...]: response-aligned
            ones right-padded to [B, T], e.g. ``responses`` (LongTensor), ``old_log_probs``
            (FloatTensor); a scorer with ``stage="counterfactual"`` also gets the stage's per-rollout
            fields ``credit_cf_scores`` [B, S+1], ``credit_cf_spans`` [B, S, 2], ``credit_cf_answer`` [B, 2].
        correct: BoolTensor[B], outcome reward > ``credit.correct_threshold``.
        groups: GroupIndex of the batch (group id per row, -1 for padding rows).
        ktae_params: KTAE options (the ``ktae`` scorer reads them), ignore ids already resolved.
        tokenizer: the trainer's tokenizer or None (a scorer working on text decodes with it).
    """

    response_mask: torch.Tensor
    fields: Mapping[str, torch.Tensor]
    correct: torch.Tensor
    groups: GroupIndex
    ktae_params: KTAEParams = field(default_factory=KTAEParams)
    tokenizer: Any = None


ScorerFn = Callable[[ScorerInputs], torch.Tensor]


@dataclass(frozen=True)
class SignificanceScorer:
    """A significance scorer: ``fn(inputs) -> FloatTensor[B, T]``, higher = more significant.

    Attributes:
        name: the value of ``credit.length_reward.scorer`` that selects it.
        fn: the scoring function; only valid positions of its output are read (they must be finite).
        fields: TransferQueue fields it needs, each a response-aligned Tensor[B, T]
            (e.g. ``("old_log_probs",)``); the trainer fetches them into ``inputs.fields``.
        normalize: min-max normalise the scores per response before thresholding (True), or
            threshold them as they are (False: the scorer already returns values in [0, 1]).
        stage: None, or "counterfactual": the trainer runs the counterfactual scoring stage on
            every rollout of a group with >= 2 rollouts before the shaping, and adds the stage's
            fields (``core.counterfactual.STAGE_FIELDS``) to ``inputs.fields``.
    """

    name: str
    fn: ScorerFn
    fields: tuple[str, ...] = ()
    normalize: bool = True
    stage: str | None = None

    def __post_init__(self):
        if self.stage not in SCORER_STAGES:
            raise ValueError(
                f"significance scorer {self.name!r}: stage must be one of {SCORER_STAGES}, got {self.stage!r}"
            )

    @property
    def all_fields(self) -> tuple[str, ...]:
        """``fields`` plus the stage's fields when the scorer asks for a stage."""
        extra = STAGE_FIELDS if self.stage == "counterfactual" else ()
        return tuple(dict.fromkeys([*self.fields, *extra]))


def significance_scorer(
    fields: Sequence[str] = ("responses",), normalize: bool = True, name: str | None = None, stage: str | None = None
):
    """Decorator for a user scorer, selected with ``credit.length_reward.scorer=my_pkg.module:function``.

    Put ``@significance_scorer(fields=("responses",))`` over ``def my_scorer(inputs: ScorerInputs)``
    returning FloatTensor[B, T] (higher = more significant); ``inputs.tokenizer`` decodes the ids
    for a text model such as LLMLingua-2. ``normalize=False`` if the scores already lie in [0, 1];
    ``stage="counterfactual"`` to receive the counterfactual scoring stage's span scores as well.
    """
    fields = tuple(fields)
    if not all(isinstance(f, str) and f for f in fields):
        raise ValueError(f"significance_scorer fields must be non-empty field names, got {fields!r}")

    def wrap(fn: ScorerFn) -> SignificanceScorer:
        return SignificanceScorer(
            name=name or getattr(fn, "__name__", "user"), fn=fn, fields=fields, normalize=normalize, stage=stage
        )

    return wrap


_SCORERS: dict[str, SignificanceScorer] = {}


def register_scorer(scorer: SignificanceScorer) -> SignificanceScorer:
    """Register a scorer under ``scorer.name`` (refuses a duplicate name)."""
    if not scorer.name.isidentifier():
        raise ValueError(f"scorer name must be an identifier, got {scorer.name!r}")
    if scorer.name in _SCORERS:
        raise ValueError(f"significance scorer {scorer.name!r} is already registered")
    _SCORERS[scorer.name] = scorer
    return scorer


def get_scorer(name: str) -> SignificanceScorer:
    """The registered scorer ``name``; ValueError listing the valid names otherwise."""
    if name not in _SCORERS:
        raise ValueError(
            f"credit.length_reward.scorer: unknown scorer {name!r}; valid: {', '.join(list_scorers())} "
            "or an import path 'module.path:function'"
        )
    return _SCORERS[name]


def list_scorers() -> list[str]:
    return sorted(_SCORERS)


def resolve_scorer(spec: str) -> SignificanceScorer:
    """A registered name, or ``module.path:function`` imported with importlib (never eval).

    The imported object may be a :class:`SignificanceScorer` (from ``significance_scorer``) or a
    plain callable; a plain callable may carry ``fields``, ``normalize`` and ``stage`` attributes
    (defaults ``("responses",)``, True, None). Raises ValueError naming ``credit.length_reward.scorer``.
    """
    if ":" not in spec:
        return get_scorer(spec)
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"credit.length_reward.scorer={spec}: cannot import module {module_name!r}: {err}") from err
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"credit.length_reward.scorer={spec}: {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, attr)
    if isinstance(obj, SignificanceScorer):
        return obj
    if not callable(obj):
        raise ValueError(
            f"credit.length_reward.scorer={spec}: expected a function (ScorerInputs) -> Tensor[B, T], "
            f"got {type(obj).__name__}"
        )
    fields = getattr(obj, "fields", ("responses",))
    if isinstance(fields, str) or not all(isinstance(f, str) for f in fields):
        raise ValueError(f"credit.length_reward.scorer={spec}: its 'fields' must be a tuple of field names")
    stage = getattr(obj, "stage", None)
    if stage not in SCORER_STAGES:
        raise ValueError(
            f"credit.length_reward.scorer={spec}: its 'stage' must be one of {SCORER_STAGES}, got {stage!r}"
        )
    return SignificanceScorer(
        name=spec, fn=obj, fields=tuple(fields), normalize=bool(getattr(obj, "normalize", True)), stage=stage
    )


def run_scorer(scorer: SignificanceScorer, inputs: ScorerInputs) -> torch.Tensor:
    """Call ``scorer`` and check its output: FloatTensor[B, T] float64, 0 at masked positions.

    Raises ValueError when a declared field is missing, the output is not a (B, T) tensor, or a
    valid position holds NaN / inf (naming the scorer, the rollout and the position).
    """
    missing = [f for f in scorer.all_fields if f not in inputs.fields]
    if missing:
        raise ValueError(f"significance scorer {scorer.name!r} needs batch field {missing[0]!r}, which is missing")
    out = scorer.fn(inputs)
    shape = tuple(inputs.response_mask.shape)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"significance scorer {scorer.name!r} must return a Tensor of shape (B, T) = {shape}, got {got}"
        )
    out = out.detach().to(torch.float64)
    valid = inputs.response_mask.bool()
    bad = valid & ~torch.isfinite(out)
    if bad.any():
        row, pos = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"significance scorer {scorer.name!r} returned {out[row, pos].item()} for rollout {row} at response "
            f"position {pos}: scores of valid tokens must be finite (check its inputs, e.g. old_log_probs)"
        )
    return torch.where(valid, out, torch.zeros_like(out))


def _surprisal(inputs: ScorerInputs) -> torch.Tensor:
    """s_it = -log pi_old(o_it): tokens the policy found hard to predict carry the decisions."""
    return -inputs.fields["old_log_probs"].to(torch.float64)


def _ktae_significance(inputs: ScorerInputs) -> torch.Tensor:
    """s_it = |K(o_it)|, KTAE's key-token value (0 in groups that are all correct or all wrong)."""
    K, _ = key_token_values(
        inputs.fields["responses"], inputs.response_mask, inputs.correct, inputs.groups, inputs.ktae_params
    )
    return K.abs()


def _counterfactual(inputs: ScorerInputs) -> torch.Tensor:
    """s_it = I_hat of the span holding token t (0 outside measured spans), in [0, 1]."""
    scores, spans, _ = (inputs.fields[f] for f in STAGE_FIELDS)
    return token_significance(scores, spans, inputs.response_mask)


register_scorer(SignificanceScorer("surprisal", _surprisal, fields=("old_log_probs",), normalize=True))
register_scorer(SignificanceScorer("ktae", _ktae_significance, fields=("responses",), normalize=True))
register_scorer(SignificanceScorer("counterfactual", _counterfactual, normalize=False, stage="counterfactual"))
BUILTIN_SCORERS = ("surprisal", "ktae", "counterfactual")


# ----------------------------------------------------------------------------------------- maths


def minmax_normalize(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-response min-max normalisation over the valid tokens.

        s^_it = (s_it - min_t s_it) / (max_t s_it - min_t s_it),   s^_it = 1 when max == min

    (constant scores count as significant, as the authors' ``normalize_probs``.)
    Shapes: scores FloatTensor[B, T] (finite at valid positions), response_mask [B, T]
            -> FloatTensor[B, T] float64 in [0, 1], 0 at masked positions.
    """
    valid = response_mask.bool()
    s = scores.to(torch.float64)
    lo = torch.where(valid, s, torch.full_like(s, math.inf)).amin(dim=-1, keepdim=True)
    hi = torch.where(valid, s, torch.full_like(s, -math.inf)).amax(dim=-1, keepdim=True)
    span = hi - lo
    flat = ~(span > 0)  # also rows without a valid token (inf - inf = nan)
    norm = torch.where(flat, torch.ones_like(s), (s - lo) / torch.where(flat, torch.ones_like(span), span))
    return torch.where(valid, norm.clamp(0.0, 1.0), torch.zeros_like(norm))


def significance_counts(
    normalized: torch.Tensor, response_mask: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insignificant (s^ < threshold) and significant (s^ >= threshold) valid tokens per rollout.

    Shapes: normalized [B, T], response_mask [B, T]
            -> (N_insig FloatTensor[B] float64, N_sig FloatTensor[B] float64, insignificant BoolTensor[B, T]).
    """
    valid = response_mask.bool()
    insignificant = valid & (normalized < threshold)
    significant = valid & ~insignificant
    return insignificant.sum(-1).double(), significant.sum(-1).double(), insignificant


def group_reference_counts(
    n_insig: torch.Tensor, n_sig: torch.Tensor, correct: torch.Tensor, nonempty: torch.Tensor, groups: GroupIndex
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference counts of each rollout's group, for all groups at once (index ops, no loop).

        R_g = {non-empty correct rollouts of g} if non-empty, else {non-empty rollouts of g}
        N_insig_ref_g = mean_{j in R_g} N_insig_j,   N_sig_ref_g = mean_{j in R_g} N_sig_j

    Groups without a non-empty rollout and padding rows get 0.
    Shapes: n_insig, n_sig FloatTensor[B]; correct, nonempty BoolTensor[B]; groups.group [B]
            -> (N_insig_ref FloatTensor[B] float64, N_sig_ref FloatTensor[B] float64), per row.
    """
    g = groups.group
    use = (g >= 0) & nonempty
    G = groups.num_groups
    idx = g[use]
    c = correct[use].double()
    ones = torch.ones_like(c)

    def per_group(values: torch.Tensor) -> torch.Tensor:
        return group_sum(values, idx, G)

    n_all, n_corr = per_group(ones), per_group(c)
    ins, sig = n_insig[use].double(), n_sig[use].double()
    from_correct = n_corr > 0
    ref_ins = torch.where(from_correct, per_group(ins * c) / n_corr.clamp_min(1), per_group(ins) / n_all.clamp_min(1))
    ref_sig = torch.where(from_correct, per_group(sig * c) / n_corr.clamp_min(1), per_group(sig) / n_all.clamp_min(1))
    real = g >= 0
    gi = g.clamp_min(0)
    zero = torch.zeros(g.shape[0], dtype=torch.float64)
    if G == 0:
        return zero, zero.clone()
    return torch.where(real, ref_ins[gi], zero), torch.where(real, ref_sig[gi], zero)


def _members_loop(uids: Sequence[str]) -> dict[str, list[int]]:
    """Rows of each real group, in order of first appearance (for the loop references)."""
    members: dict[str, list[int]] = {}
    for i, uid in enumerate(uids):
        if not uid.startswith(PADDING_UID_PREFIX):
            members.setdefault(uid, []).append(i)
    return members


def group_reference_counts_loop(
    n_insig: torch.Tensor, n_sig: torch.Tensor, correct: torch.Tensor, nonempty: torch.Tensor, uids: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference loop for :func:`group_reference_counts` (one Python iteration per group)."""
    ref_ins = torch.zeros(len(uids), dtype=torch.float64)
    ref_sig = torch.zeros(len(uids), dtype=torch.float64)
    for rows in _members_loop(uids).values():
        usable = [i for i in rows if bool(nonempty[i])]
        reference = [i for i in usable if bool(correct[i])] or usable
        if not reference:
            continue
        ref_ins[rows] = sum(float(n_insig[i]) for i in reference) / len(reference)
        ref_sig[rows] = sum(float(n_sig[i]) for i in reference) / len(reference)
    return ref_ins, ref_sig


def prompt_keys(prompts: Sequence[torch.Tensor]) -> list[str]:
    """A stable key per rollout: the BLAKE2b-128 hex digest of its prompt token ids (valid tokens
    only, as int64). The same prompt gets the same key in every step and process.

    Shapes: B 1-D integer tensors -> B strings.
    """
    return [
        hashlib.blake2b(p.reshape(-1).to(torch.int64).numpy().tobytes(), digest_size=16).hexdigest() for p in prompts
    ]


class PromptAnchors:
    """First-seen reference counts per prompt, least recently seen dropped first beyond ``capacity``.

    ``resolve`` returns, per group, the counts stored for its prompt, storing the group's own counts
    when the prompt is new. ``evictions`` counts the prompts dropped so far. ``state_dict`` /
    ``load_state_dict`` (JSON-serialisable) keep the entries in their recency order, so a resumed
    run continues as an uninterrupted one.
    """

    def __init__(self, capacity: int = 100_000):
        if not (is_int(capacity) and capacity >= 1):
            raise ValueError(f"credit.length_reward.anchor_capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self.entries: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def resolve(
        self, keys: Sequence[str], ins: torch.Tensor, sig: torch.Tensor, usable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Anchors of G groups, in order (a prompt stored by an earlier group of the same call is found).

        keys: G prompt keys; ins, sig: FloatTensor[G] the groups' own counts; usable: BoolTensor[G]
        (False: the group has no non-empty rollout, nothing is stored and its anchor is 0)
        -> (N_insig_ref (G,), N_sig_ref (G,), new (G,) bool: anchored by this call).
        """
        out = torch.zeros(len(keys), 2, dtype=torch.float64)
        new = torch.zeros(len(keys), dtype=torch.bool)
        own = torch.stack([ins.double(), sig.double()], dim=1).tolist()
        ok = usable.tolist()
        for g, key in enumerate(keys):  # a dict lookup per prompt: the store is keyed by strings
            stored = self.entries.get(key)
            if stored is not None:
                self.entries.move_to_end(key)
            elif ok[g]:
                stored = self.entries[key] = (own[g][0], own[g][1])
                new[g] = True
                if len(self.entries) > self.capacity:
                    self.entries.popitem(last=False)
                    self.evictions += 1
            if stored is not None:
                out[g, 0], out[g, 1] = stored
        return out[:, 0], out[:, 1], new

    def metrics(self) -> dict[str, float]:
        """``length_reward/anchor_prompts/count`` (stored now) and ``anchor_evictions/count`` (so far)."""
        return {
            "length_reward/anchor_prompts/count": float(len(self.entries)),
            "length_reward/anchor_evictions/count": float(self.evictions),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "evictions": self.evictions,
            "entries": [[k, ins, sig] for k, (ins, sig) in self.entries.items()],  # oldest first
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"capacity", "evictions", "entries"}
        if set(state) != expected:
            raise ValueError(
                f"length reward anchor state: keys {sorted(state)}, expected {sorted(expected)} "
                "(credit.length_reward.anchor=first_seen)"
            )
        entries = [(str(k), (float(i), float(s))) for k, i, s in state["entries"]]
        dropped = max(0, len(entries) - self.capacity)  # a smaller capacity after resume: keep the newest
        self.entries = OrderedDict(entries[dropped:])
        self.evictions = int(state["evictions"]) + dropped


def _group_first_rows(groups: GroupIndex) -> torch.Tensor:
    """LongTensor[G]: the first row of each group."""
    real = groups.group >= 0
    rows = torch.arange(groups.group.shape[0])
    first = torch.full((groups.num_groups,), groups.group.shape[0], dtype=torch.long)
    return first.scatter_reduce_(0, groups.group[real], rows[real], reduce="amin")


def first_seen_reference_counts(
    n_insig: torch.Tensor,
    n_sig: torch.Tensor,
    nonempty: torch.Tensor,
    groups: GroupIndex,
    keys: Sequence[str],
    anchors: PromptAnchors,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference counts from the first sight of each group's prompt (see :class:`PromptAnchors`).

        own_g = mean over the non-empty rollouts of g of (N_insig, N_sig)   (correct or not)
        N_ref_g = anchors[key_g] if key_g was seen before, else own_g (and it is stored)

    keys: B prompt keys (:func:`prompt_keys`), equal within a group (ValueError naming the rollout
    otherwise); padding rows are ignored. Groups without a non-empty rollout and padding rows get 0.
    Shapes: n_insig, n_sig FloatTensor[B]; nonempty BoolTensor[B]; groups.group [B]
            -> (N_insig_ref FloatTensor[B] float64, N_sig_ref FloatTensor[B] float64, new BoolTensor[G]).
    """
    g, G = groups.group, groups.num_groups
    real = g >= 0
    if len(keys) != g.shape[0]:
        raise ValueError(f"{len(keys)} prompt keys for {g.shape[0]} rollouts")
    zero = torch.zeros(g.shape[0], dtype=torch.float64)
    if G == 0:
        return zero, zero.clone(), torch.zeros(0, dtype=torch.bool)
    first = _group_first_rows(groups)
    codes = {k: c for c, k in enumerate(dict.fromkeys(keys))}
    code = torch.tensor([codes[k] for k in keys], dtype=torch.long)
    differs = real & (code != code[first[g.clamp_min(0)]])
    if bool(differs.any()):
        row = int(differs.nonzero()[0])
        raise ValueError(
            f"rollout {row}: its prompt differs from the rest of its group (uid); "
            "credit.length_reward.anchor=first_seen keeps anchors per prompt"
        )
    use = real & nonempty
    idx = g[use]
    n = group_sum(torch.ones(idx.shape[0], dtype=torch.float64), idx, G)
    own_ins = group_sum(n_insig[use].double(), idx, G) / n.clamp_min(1)
    own_sig = group_sum(n_sig[use].double(), idx, G) / n.clamp_min(1)
    # groups in order of first appearance in the batch: of two new groups with one prompt, the first anchors it
    order = first.argsort()
    ins_o, sig_o, new_o = anchors.resolve(
        [keys[i] for i in first[order].tolist()], own_ins[order], own_sig[order], (n > 0)[order]
    )
    ref_ins, ref_sig, new = (torch.empty_like(t).scatter_(0, order, t) for t in (ins_o, sig_o, new_o))
    gi = g.clamp_min(0)
    return torch.where(real, ref_ins[gi], zero), torch.where(real, ref_sig[gi], zero), new


def first_seen_reference_counts_loop(
    n_insig: torch.Tensor,
    n_sig: torch.Tensor,
    nonempty: torch.Tensor,
    uids: Sequence[str],
    keys: Sequence[str],
    store: dict[str, tuple[float, float]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference loop for :func:`first_seen_reference_counts` with an unbounded dict ``store``
    (key -> (N_insig_ref, N_sig_ref)), updated in place; groups in order of first appearance."""
    ref_ins = torch.zeros(len(uids), dtype=torch.float64)
    ref_sig = torch.zeros(len(uids), dtype=torch.float64)
    for rows in _members_loop(uids).values():
        key = keys[rows[0]]
        usable = [i for i in rows if bool(nonempty[i])]
        if key not in store and usable:
            store[key] = (
                sum(float(n_insig[i]) for i in usable) / len(usable),
                sum(float(n_sig[i]) for i in usable) / len(usable),
            )
        if key in store:
            ref_ins[rows], ref_sig[rows] = store[key]
    return ref_ins, ref_sig


def significance_ratios(
    n_insig: torch.Tensor, n_sig: torch.Tensor, ref_insig: torch.Tensor, ref_sig: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_ins = N_insig / N_insig_ref and r_sig = N_sig / N_sig_ref.

    Both are 0 for a rollout whose reference has N_insig_ref == 0 or N_sig_ref == 0 (as the
    authors' code, which sets both ratios to 0 unless both reference counts are positive).
    Empty rollouts have N = 0, hence r = 0. Shapes: all (B,) -> ((B,), (B,)) float64.
    """
    ok = (ref_insig > 0) & (ref_sig > 0)
    r_ins = torch.where(ok, n_insig.double() / torch.where(ok, ref_insig, 1.0), 0.0)
    r_sig = torch.where(ok, n_sig.double() / torch.where(ok, ref_sig, 1.0), 0.0)
    return r_ins.double(), r_sig.double()


def length_reward_shaping(
    r_ins: torch.Tensor,
    r_sig: torch.Tensor,
    correct: torch.Tensor,
    nonempty: torch.Tensor,
    *,
    lambda_c: float,
    lambda_wn: float,
    lambda_we: float,
    lambda_dyn: float,
) -> torch.Tensor:
    """The reward change d_i of each rollout.

        correct:   d = lambda_c cos(clip(r_ins, 0, pi/2))
        incorrect: d = min(0, lambda_wn (cos(clip(r_ins, 0, pi/2)) - 1) + lambda_dyn r_sig - lambda_we)
        rollouts with nonempty False (empty responses, padding rows): d = 0

    Shapes: r_ins, r_sig FloatTensor[B]; correct, nonempty BoolTensor[B] -> FloatTensor[B] float64.
    """
    cos = torch.cos(r_ins.double().clamp(0.0, HALF_PI))
    bonus = lambda_c * cos
    penalty = (lambda_wn * (cos - 1.0) + lambda_dyn * r_sig.double() - lambda_we).clamp_max(0.0)
    d = torch.where(correct, bonus, penalty)
    return torch.where(nonempty, d, torch.zeros_like(d))


def add_on_last_token(rm_scores: torch.Tensor, response_mask: torch.Tensor, shaping: torch.Tensor) -> torch.Tensor:
    """rm_scores with d_i added on the last valid token of rollout i (where verl puts the outcome
    reward; for a truncated response that is position T-1). Rows without a valid token unchanged.

    Shapes: rm_scores [B, T], response_mask [B, T], shaping [B] -> [B, T] (dtype of rm_scores).
    """
    valid = response_mask.bool()
    T = valid.shape[-1]
    positions = torch.arange(T).expand_as(valid)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=-1)  # (B,), -1 if empty
    add = torch.zeros(rm_scores.shape, dtype=torch.float64)
    rows = (last >= 0).nonzero(as_tuple=True)[0]
    add[rows, last[rows]] = shaping[rows].double()
    return (rm_scores.double() + add).to(rm_scores.dtype)


@dataclass(frozen=True)
class LengthRewardResult:
    """Everything :func:`compute_length_reward` computed (B rows, T positions).

    normalized [B, T] float64 (s^, 0 at masked positions); insignificant [B, T] bool;
    n_insig, n_sig, ref_insig, ref_sig, r_ins, r_sig, shaping [B] float64; lengths [B] float64;
    correct, nonempty, real [B] bool (real = not a padding row); outcome [B] float64 (raw r_i);
    shaped_rm_scores [B, T] (dtype of rm_scores); lambda_dyn float; anchor: "first_seen" or "group";
    new_anchors: prompts anchored by this call (first_seen).
    """

    normalized: torch.Tensor
    insignificant: torch.Tensor
    n_insig: torch.Tensor
    n_sig: torch.Tensor
    ref_insig: torch.Tensor
    ref_sig: torch.Tensor
    r_ins: torch.Tensor
    r_sig: torch.Tensor
    shaping: torch.Tensor
    lengths: torch.Tensor
    correct: torch.Tensor
    nonempty: torch.Tensor
    real: torch.Tensor
    outcome: torch.Tensor
    shaped_rm_scores: torch.Tensor
    lambda_dyn: float
    anchor: str = "group"
    new_anchors: int = 0


def compute_length_reward(
    significance: torch.Tensor,
    rm_scores: torch.Tensor,
    response_mask: torch.Tensor,
    groups: GroupIndex,
    config: LengthRewardConfig,
    lambda_dyn: float,
    *,
    correct_threshold: float = 0.0,
    normalize: bool = True,
    anchors: PromptAnchors | None = None,
    prompt_keys: Sequence[str] | None = None,
) -> LengthRewardResult:
    """The whole shaping for one batch, from raw significance scores to shaped ``rm_scores``.

    significance: FloatTensor[B, T], a scorer's output (see :func:`run_scorer`).
    rm_scores: FloatTensor[B, T], verl's outcome reward on the last valid token (checked finite).
    normalize: min-max normalise ``significance`` per response (the scorer's declaration).
    anchors, prompt_keys: with ``config.anchor == "first_seen"``, the run's anchor store (updated in
        place) and B prompt keys (:func:`prompt_keys`). None: a fresh store (every prompt seen for the
        first time) and the uid as the key, e.g. for a one-off batch.
    Shapes: [B, T] inputs, groups.group [B] -> LengthRewardResult.
    """
    if not (significance.shape == rm_scores.shape == response_mask.shape):
        raise ValueError(
            f"significance {tuple(significance.shape)}, rm_scores {tuple(rm_scores.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must all be (B, T)"
        )
    if not torch.isfinite(rm_scores).all():
        row = int((~torch.isfinite(rm_scores).all(-1)).nonzero()[0])
        raise ValueError(f"rm_scores of rollout {row} is not finite: check the reward function's output")
    valid = response_mask.bool()
    bad = valid & ~torch.isfinite(significance)
    if bad.any():
        row, pos = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"significance score of rollout {row} at response position {pos} is not finite")
    real = groups.group >= 0
    lengths = valid.sum(-1).double()
    nonempty = real & (lengths > 0)
    outcome = rm_scores.double().sum(-1)
    correct = outcome > correct_threshold
    norm = minmax_normalize(significance, response_mask) if normalize else significance.double() * valid
    n_insig, n_sig, insignificant = significance_counts(norm, response_mask, config.threshold)
    new_anchors = 0
    if config.anchor == "first_seen":
        anchors = PromptAnchors(config.anchor_capacity) if anchors is None else anchors
        keys = prompt_keys
        if keys is None:  # one-off batch: each group its own prompt
            keys = [groups.uids[i] if i >= 0 else "" for i in groups.group.tolist()]
        ref_ins, ref_sig, new = first_seen_reference_counts(n_insig, n_sig, nonempty, groups, keys, anchors)
        new_anchors = int(new.sum())
    else:
        ref_ins, ref_sig = group_reference_counts(n_insig, n_sig, correct, nonempty, groups)
    r_ins, r_sig = significance_ratios(n_insig, n_sig, ref_ins, ref_sig)
    shaping = length_reward_shaping(
        r_ins,
        r_sig,
        correct,
        nonempty,
        lambda_c=config.lambda_c,
        lambda_wn=config.lambda_wn,
        lambda_we=config.lambda_we,
        lambda_dyn=lambda_dyn,
    )
    return LengthRewardResult(
        normalized=norm,
        insignificant=insignificant,
        n_insig=n_insig,
        n_sig=n_sig,
        ref_insig=ref_ins,
        ref_sig=ref_sig,
        r_ins=r_ins,
        r_sig=r_sig,
        shaping=shaping,
        lengths=lengths,
        correct=correct,
        nonempty=nonempty,
        real=real,
        outcome=outcome,
        shaped_rm_scores=add_on_last_token(rm_scores, response_mask, shaping),
        lambda_dyn=float(lambda_dyn),
        anchor=config.anchor,
        new_anchors=new_anchors,
    )


def length_reward_metrics(result: LengthRewardResult) -> dict[str, float]:
    """Scalar metrics named ``length_reward/<quantity>/<stat>`` (no "min"/"max" in any name).

    Token counts and ratios are means over the non-empty real rollouts; the shaping means are over
    correct / incorrect non-empty rollouts and are left out when there is none.
    """
    ne = result.nonempty
    out = {
        "length_reward/lambda_dyn/value": result.lambda_dyn,
        "length_reward/empty_responses/count": float((result.real & ~ne).sum()),
        "length_reward/raw_score/mean": _mean(result.outcome, result.real),
        "length_reward/shaped_score/mean": _mean(result.outcome + result.shaping, result.real),
    }
    if result.anchor == "first_seen":
        out["length_reward/anchor_new_prompts/count"] = float(result.new_anchors)
    if ne.any():
        length = result.lengths.clamp_min(1)
        out.update(
            {
                "length_reward/insignificant_tokens/mean": _mean(result.n_insig, ne),
                "length_reward/significant_tokens/mean": _mean(result.n_sig, ne),
                "length_reward/insignificant_ratio/mean": _mean(result.n_insig / length, ne),
                "length_reward/significant_ratio/mean": _mean(result.n_sig / length, ne),
                "length_reward/r_ins/mean": _mean(result.r_ins, ne),
                "length_reward/r_sig/mean": _mean(result.r_sig, ne),
                "length_reward/zero_reference/fraction": _mean(
                    ((result.ref_insig <= 0) | (result.ref_sig <= 0)).double(), ne
                ),
            }
        )
    for name, rows in (("shaping_correct", ne & result.correct), ("shaping_incorrect", ne & ~result.correct)):
        if rows.any():
            out[f"length_reward/{name}/mean"] = _mean(result.shaping, rows)
    return out


def _mean(values: torch.Tensor, rows: torch.Tensor) -> float:
    return float(values[rows].double().mean()) if rows.any() else 0.0


# -------------------------------------------------------------------------------------- schedule


class DynamicLambdaSchedule:
    """lambda_dyn, the weight of r_sig in the incorrect-rollout reward, over training (Bingo's rule).

    Score curve: y_s = mean raw outcome reward of the real rollouts of training step s (before
    shaping). The value used at step t depends only on steps < t (the authors update it after
    each step's advantage), so ``value_at(t)`` first closes step t-1.

        explore = lambda_we / (pi/2),  floor = -2 lambda_we / (pi/2)
        before activation:  lambda_dyn = explore   (longer significant reasoning costs less when wrong)
        after closing step s with s >= slope_start_step and at least 2 steps seen:
            k = min(slope_period, steps seen - 1);  m = least-squares slope of y over the last k steps
                (m = 0 when k = 1)
            first time (activation): m0 = m;  scale = explore / max(1e-6, |m0|)  (explore if m0 == 0)
            m' = m * scale                    (so the first slope maps to +-explore)
            m' <= slope_threshold:  flat_steps += 1;  lambda_dyn = max(floor, -penalty_step * flat_steps)
            otherwise:              flat_steps = 0;   lambda_dyn = m'
    With ``schedule="constant"`` lambda_dyn stays ``explore``. Several calls within one step (verl's
    ``parameter_sync_step`` > 1) accumulate into that step's score.

    State (``state_dict``/``load_state_dict``, JSON-serialisable): the value, m0, the scale,
    flat_steps, the last ``slope_period`` (step, score) points, the number of steps seen, the latest
    step and the open step's running sum/count, so a resumed run continues exactly as an
    uninterrupted one.
    """

    _STATE_KEYS = (
        "value",
        "initial_slope",
        "slope_scale",
        "flat_steps",
        "history",
        "steps_seen",
        "open_step",
        "latest_step",
        "open_sum",
        "open_count",
        "last_slope",
        "last_scaled_slope",
    )

    def __init__(self, config: LengthRewardConfig):
        self.config = config
        self.explore = config.lambda_we / HALF_PI
        self.floor = -2.0 * config.lambda_we / HALF_PI
        self.value = self.explore
        self.initial_slope: float | None = None
        self.slope_scale: float | None = None
        self.flat_steps = 0
        self.history: list[tuple[int, float]] = []
        self.steps_seen = 0
        self.open_step: int | None = None
        self.latest_step: int | None = None  # the highest step observed
        self.open_sum = 0.0
        self.open_count = 0
        self.last_slope: float | None = None
        self.last_scaled_slope: float | None = None

    @property
    def active(self) -> bool:
        """True once the first slope was measured (lambda_dyn follows the score curve)."""
        return self.initial_slope is not None

    def value_at(self, step: int) -> float:
        """lambda_dyn for training step ``step`` (closes the previous step first)."""
        if self.open_step is not None and step > self.open_step:
            self._close()
        return self.value

    def observe(self, step: int, score_sum: float, count: int) -> None:
        """Add ``count`` rollouts whose raw outcome rewards sum to ``score_sum`` to step ``step``."""
        if self.latest_step is not None and step < self.latest_step:
            raise ValueError(
                f"length reward schedule: step {step} observed after step {self.latest_step}; steps must not go back"
            )
        if not (math.isfinite(score_sum) and count >= 0):
            raise ValueError(f"length reward schedule: bad observation (sum {score_sum}, count {count})")
        if self.open_step is not None and step > self.open_step:
            self._close()
        self.open_step = self.latest_step = int(step)
        self.open_sum += float(score_sum)
        self.open_count += int(count)

    def _close(self) -> None:
        step, count = self.open_step, self.open_count
        mean = self.open_sum / count if count else None
        self.open_step, self.open_sum, self.open_count = None, 0.0, 0
        if mean is None:  # a step without real rollouts adds no point to the curve
            return
        self.history = (self.history + [(int(step), float(mean))])[-self.config.slope_period :]
        self.steps_seen += 1
        if self.config.schedule != "bingo" or step < self.config.slope_start_step or self.steps_seen < 2:
            return
        k = min(self.config.slope_period, self.steps_seen - 1)
        slope = _least_squares_slope(self.history[-k:])
        if self.initial_slope is None:
            self.initial_slope = slope
            self.slope_scale = self.explore if slope == 0 else self.explore / max(1e-6, abs(slope))
        scaled = slope * self.slope_scale
        if scaled <= self.config.slope_threshold:
            self.flat_steps += 1
            self.value = max(self.floor, -self.config.penalty_step * self.flat_steps)
        else:
            self.flat_steps = 0
            self.value = scaled
        self.last_slope, self.last_scaled_slope = slope, scaled

    def metrics(self) -> dict[str, float]:
        """``length_reward/...`` schedule metrics (the scaled slope once measured)."""
        out = {"length_reward/flat_steps/count": float(self.flat_steps)}
        if self.last_scaled_slope is not None:
            out["length_reward/score_slope/scaled"] = self.last_scaled_slope
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {key: getattr(self, key) for key in self._STATE_KEYS}
        state["history"] = [[s, y] for s, y in self.history]  # JSON has no tuples
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in self._STATE_KEYS if k not in state]
        unknown = sorted(set(state) - set(self._STATE_KEYS))
        if missing or unknown:
            raise ValueError(
                f"length reward schedule state: missing keys {missing}, unknown keys {unknown}; "
                f"expected {list(self._STATE_KEYS)}"
            )
        self.value = float(state["value"])
        self.initial_slope = None if state["initial_slope"] is None else float(state["initial_slope"])
        self.slope_scale = None if state["slope_scale"] is None else float(state["slope_scale"])
        self.flat_steps = int(state["flat_steps"])
        self.history = [(int(s), float(y)) for s, y in state["history"]][-self.config.slope_period :]
        self.steps_seen = int(state["steps_seen"])
        self.open_step = None if state["open_step"] is None else int(state["open_step"])
        self.latest_step = None if state["latest_step"] is None else int(state["latest_step"])
        self.open_sum = float(state["open_sum"])
        self.open_count = int(state["open_count"])
        self.last_slope = None if state["last_slope"] is None else float(state["last_slope"])
        self.last_scaled_slope = None if state["last_scaled_slope"] is None else float(state["last_scaled_slope"])


def _least_squares_slope(points: Sequence[tuple[int, float]]) -> float:
    """Slope of the least-squares line through (step, score) points; 0 for fewer than 2 distinct steps."""
    if len(points) < 2:
        return 0.0
    xs = [float(s) for s, _ in points]
    ys = [float(y) for _, y in points]
    xm, ym = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - xm) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True)) / sxx
