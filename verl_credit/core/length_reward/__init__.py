"""Significance-aware length reward (Bingo, Liu et al., arXiv 2506.08125) without an external model.

Public API (every name is importable from this package; the module that defines it in brackets):
    LengthRewardConfig                 -- the ``credit.length_reward`` block (schema, defaults, checks).  [config]
    ScorerInputs, SignificanceScorer   -- what a significance scorer receives / declares.                [scorers]
    significance_scorer(fields, normalize)  -- decorator: a function -> SignificanceScorer.               [scorers]
    register_scorer, get_scorer, list_scorers, resolve_scorer, run_scorer                              [scorers]
    prompt_keys(prompts)               -- a stable key per rollout: a hash of its prompt token ids.      [anchors]
    PromptAnchors                      -- first-seen reference counts per prompt (LRU-bounded, state_dict). [anchors]
    first_seen_reference_counts(n_insig, n_sig, nonempty, groups, keys, anchors)  (B,) -> (B,), (B,), (G,) [anchors]
    first_seen_reference_counts_loop(...)                the same, one Python iteration per group       [anchors]
    group_reference_counts(n_insig, n_sig, correct, nonempty, groups)   (B,) -> (B,), (B,)             [anchors]
    group_reference_counts_loop(...)                     the same, one Python iteration per group       [anchors]
    minmax_normalize(scores, mask)                       (B, T) -> (B, T)                               [shaping]
    significance_counts(normalized, mask, threshold)     (B, T) -> (B,), (B,), (B, T)                   [shaping]
    significance_ratios(n_insig, n_sig, ref_insig, ref_sig)             -> r_ins (B,), r_sig (B,)      [shaping]
    length_reward_shaping(r_ins, r_sig, correct, nonempty, ...)         -> (B,)                        [shaping]
    add_on_last_token(rm_scores, mask, shaping)          (B, T) -> (B, T)                               [shaping]
    compute_length_reward(...)         -- everything above in one call -> LengthRewardResult.            [shaping]
    length_reward_metrics(result)      -- scalar metrics ``length_reward/<quantity>/<stat>``.            [shaping]
    DynamicLambdaSchedule              -- lambda_dyn over training, ``state_dict``/``load_state_dict``.  [schedule]

Modules, one concern each (no cycle: scorers and anchors import no sibling, config imports scorers,
shaping imports config and anchors, schedule imports config and shaping):
    config.py    the options, their defaults and checks
    scorers.py   the scorer registry, the built-in scorers, ``module:function`` user scorers
    anchors.py   the reference counts: first-seen per prompt (LRU store) or the current group
    shaping.py   normalise, count, ratios, the reward change d_i, ``compute_length_reward``, metrics
    schedule.py  lambda_dyn over training (Bingo's slope rule)

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

from verl_credit.core.length_reward.anchors import (
    PromptAnchors,
    first_seen_reference_counts,
    first_seen_reference_counts_loop,
    group_reference_counts,
    group_reference_counts_loop,
    prompt_keys,
)
from verl_credit.core.length_reward.config import ANCHORS, SCHEDULES, LengthRewardConfig
from verl_credit.core.length_reward.schedule import DynamicLambdaSchedule
from verl_credit.core.length_reward.scorers import (
    BUILTIN_SCORERS,
    SCORER_STAGES,
    ScorerFn,
    ScorerInputs,
    SignificanceScorer,
    get_scorer,
    list_scorers,
    register_scorer,
    resolve_scorer,
    run_scorer,
    significance_scorer,
)
from verl_credit.core.length_reward.shaping import (
    HALF_PI,
    LengthRewardResult,
    add_on_last_token,
    compute_length_reward,
    length_reward_metrics,
    length_reward_shaping,
    minmax_normalize,
    significance_counts,
    significance_ratios,
)

__all__ = [
    "ANCHORS",
    "BUILTIN_SCORERS",
    "DynamicLambdaSchedule",
    "HALF_PI",
    "LengthRewardConfig",
    "LengthRewardResult",
    "ScorerInputs",
    "SignificanceScorer",
    "PromptAnchors",
    "SCHEDULES",
    "SCORER_STAGES",
    "ScorerFn",
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
