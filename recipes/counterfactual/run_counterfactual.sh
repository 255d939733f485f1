#!/usr/bin/env bash
# Counterfactual importance weighting (Khandoga et al., arXiv 2602.09331) over DAPO on GSM8K, and the
# paper's three controls: CF_MODE=uniform | random | inverted (same run, other token weights).
#
#   bash recipes/counterfactual/run_counterfactual.sh                  # 8 GPUs, Qwen3-1.7B, DAPO + counterfactual
#   CF_MODE=random bash recipes/counterfactual/run_counterfactual.sh   # a control
#   MODEL_PATH=Qwen/Qwen2.5-3B bash recipes/counterfactual/run_counterfactual.sh   # the paper's other models
#   SIZE=1gpu bash recipes/counterfactual/run_counterfactual.sh        # one GPU
#   DRY_RUN=1 bash recipes/counterfactual/run_counterfactual.sh        # compose + validate, launch nothing
#
# Shared knobs (model, data, batch sizes, GRPO/DAPO, logging): recipes/common.sh. All come from the environment.
set -xeuo pipefail

CF_MODE=${CF_MODE:-counterfactual}            # counterfactual | uniform | random | inverted
RECIPE=counterfactual-$CF_MODE
DATASET=${DATASET:-gsm8k}
ALGO=${ALGO:-dapo}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- counterfactual weights (credit.counterfactual.*): the authors' defaults
CF_W_MIN=${CF_W_MIN:-0.5}                     # weight of a rollout's least important span
CF_W_MAX=${CF_W_MAX:-2.0}                     # weight of its most important span
CF_ANSWER_WEIGHT=${CF_ANSWER_WEIGHT:-1.5}     # weight of the final answer's tokens
CF_MAX_SPANS=${CF_MAX_SPANS:-10}              # spans scored per rollout (cost: 1 + spans forwards each)
CF_SEED=${CF_SEED:-0}                         # seed of the random control

"$PYTHON" -m verl_credit.main_ppo "${COMMON_OVERRIDES[@]}" \
    algorithm.adv_estimator=counterfactual \
    credit.counterfactual.mode="$CF_MODE" \
    credit.counterfactual.w_min="$CF_W_MIN" \
    credit.counterfactual.w_max="$CF_W_MAX" \
    credit.counterfactual.answer_weight="$CF_ANSWER_WEIGHT" \
    credit.counterfactual.max_spans="$CF_MAX_SPANS" \
    credit.counterfactual.seed="$CF_SEED" \
    "$@"
