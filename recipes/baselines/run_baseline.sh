#!/usr/bin/env bash
# GRPO and DAPO baselines: the same runs as the credit recipes with verl's own grpo advantage, so the
# only difference to a credit run is the estimator. Launched through verl_credit.main_ppo (verl's
# main_ppo; plugin trainer, which hands grpo to verl unchanged).
#
#   bash recipes/baselines/run_baseline.sh                          # GRPO, MATH, 8 GPUs, Qwen2.5-Math-7B
#   ALGO=dapo bash recipes/baselines/run_baseline.sh                # DAPO
#   ALGO=dapo DATASET=gsm8k bash recipes/baselines/run_baseline.sh  # DAPO on GSM8K, Qwen3-1.7B
#   SIZE=1gpu bash recipes/baselines/run_baseline.sh                # one GPU
#   DRY_RUN=1 bash recipes/baselines/run_baseline.sh                # compose + validate, launch nothing
#
# Shared knobs (model, data, batch sizes, GRPO/DAPO, logging): recipes/common.sh. All come from the environment.
set -xeuo pipefail

RECIPE=baseline
DATASET=${DATASET:-math}
ALGO=${ALGO:-grpo}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

NORM_BY_STD=${NORM_BY_STD:-true}              # false = Dr.GRPO (centred, not divided by the group std)

"$PYTHON" -m verl_credit.main_ppo "${COMMON_OVERRIDES[@]}" \
    algorithm.adv_estimator=grpo \
    algorithm.norm_adv_by_std_in_grpo="$NORM_BY_STD" \
    "$@"
