#!/usr/bin/env bash
# Variance-weighted reward, DRO's R3 (Xu et al., arXiv 2506.13351): the reference answer is teacher-forced
# after each rollout's reasoning; answer tokens whose log-prob varies across the group weight a reward that
# reorders rollouts inside their outcome class (never a wrong one above a correct one) before GRPO.
#
#   bash recipes/variance_weighted/run_variance_weighted.sh             # 8 GPUs, GSM8K, Qwen3-1.7B, GRPO + R3
#   DATASET=math bash recipes/variance_weighted/run_variance_weighted.sh
#   VW_WEIGHTING=top_fraction VW_FRAC=0.2 bash recipes/variance_weighted/run_variance_weighted.sh
#   DRY_RUN=1 bash recipes/variance_weighted/run_variance_weighted.sh   # compose + validate, launch nothing
#
# Shared knobs (model, data, batch sizes, GRPO/DAPO, logging): recipes/common.sh. All come from the environment.
set -xeuo pipefail

RECIPE=variance_weighted
DATASET=${DATASET:-gsm8k}
ALGO=${ALGO:-grpo}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- R3 (credit.variance.*)
VW_WEIGHTING=${VW_WEIGHTING:-linear}          # linear: w = sigma / mean sigma | top_fraction: 1 on the top VW_FRAC
VW_FRAC=${VW_FRAC:-0.2}
VW_R3_COEF=${VW_R3_COEF:-0.5}                 # weight of the R3 term (<= 1 with within_class)
VW_SHAPING=${VW_SHAPING:-within_class}        # within_class: R3 bounded inside each outcome class | unbounded: DRO's r + coef * zscore(R3)
VW_TEMPLATE=${VW_TEMPLATE:-'#### {answer}'}   # how reward_model.ground_truth is written after the reasoning

"$PYTHON" -m verl_credit.main_ppo "${COMMON_OVERRIDES[@]}" \
    algorithm.adv_estimator=variance_weighted \
    credit.variance.weighting="$VW_WEIGHTING" \
    credit.variance.frac="$VW_FRAC" \
    credit.variance.r3_coef="$VW_R3_COEF" \
    credit.variance.shaping="$VW_SHAPING" \
    "credit.variance.answer_template='$VW_TEMPLATE'" \
    "$@"
