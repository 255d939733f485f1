#!/usr/bin/env bash
# Cancellation-preserving batching (arXiv 2605.08666): query-preserved PPO mini-batches (every mini-batch
# holds whole groups) and the reward-balanced buffer (update only when both outcome signs make up at
# least RHO of the batch). Works with any estimator; the paper's base is GRPO on MATH.
#
#   bash recipes/batching/run_batching.sh                               # 8 GPUs, Qwen2.5-Math-7B, both on
#   REWARD_BALANCED=false bash recipes/batching/run_batching.sh         # query-preserved only
#   QUERY_PRESERVED=false bash recipes/batching/run_batching.sh         # reward-balanced only
#   MODEL_PATH=Qwen/Qwen3-4B-Base bash recipes/batching/run_batching.sh # the paper's other models
#   ESTIMATOR=ktae bash recipes/batching/run_batching.sh                # over KTAE
#   DRY_RUN=1 bash recipes/batching/run_batching.sh                     # compose + validate, launch nothing
#
# Shared knobs (model, data, batch sizes, GRPO/DAPO, logging): recipes/common.sh. All come from the environment.
set -xeuo pipefail

RECIPE=batching
DATASET=${DATASET:-math}
ALGO=${ALGO:-grpo}
QUERY_PRESERVED=${QUERY_PRESERVED:-true}      # credit.batching.query_preserved (needs actor.shuffle=false)
REWARD_BALANCED=${REWARD_BALANCED:-true}      # credit.batching.reward_balanced.enabled
if [ "$REWARD_BALANCED" = true ]; then   # the buffer replaces DAPO's dynamic sampling (verl does not
    DYNAMIC_SAMPLING=${DYNAMIC_SAMPLING:-false}   # pass algorithm.filter_groups to a custom sampler)
fi
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

ESTIMATOR=${ESTIMATOR:-grpo}                  # grpo, ktae, counterfactual, variance_weighted
RHO=${RHO:-0.25}                              # least share of positive and of negative rollouts per update
MAX_AGE=${MAX_AGE:-2}                         # steps a held-back group may wait before it is dropped
TOKEN_FLIP_EVERY=${TOKEN_FLIP_EVERY:-10}      # token-flipping diagnostic every this many steps (0 = off)

"$PYTHON" -m verl_credit.main_ppo "${COMMON_OVERRIDES[@]}" \
    algorithm.adv_estimator="$ESTIMATOR" \
    actor_rollout_ref.actor.shuffle=false \
    credit.batching.query_preserved="$QUERY_PRESERVED" \
    credit.batching.reward_balanced.enabled="$REWARD_BALANCED" \
    credit.batching.reward_balanced.rho="$RHO" \
    credit.batching.reward_balanced.max_age="$MAX_AGE" \
    credit.diagnostics.token_flip_every="$TOKEN_FLIP_EVERY" \
    "$@"
