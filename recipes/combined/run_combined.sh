#!/usr/bin/env bash
# Everything at once: KTAE advantages x counterfactual token weights, query-preserved mini-batches and the
# reward-balanced buffer (optionally the variance-weighted estimator instead of KTAE, and the length reward).
# No paper ran this combination: it is the recipe to compare against the single-method runs.
#
#   bash recipes/combined/run_combined.sh                         # 8 GPUs, MATH, Qwen2.5-Math-7B
#   ESTIMATOR=variance_weighted bash recipes/combined/run_combined.sh
#   LENGTH_REWARD=true bash recipes/combined/run_combined.sh      # + Bingo's length reward
#   DRY_RUN=1 bash recipes/combined/run_combined.sh               # compose + validate, launch nothing
#
# Shared knobs (model, data, batch sizes, GRPO/DAPO, logging): recipes/common.sh. All come from the environment.
set -xeuo pipefail

RECIPE=combined
DATASET=${DATASET:-math}
ALGO=${ALGO:-grpo}
REWARD_BALANCED=${REWARD_BALANCED:-true}
if [ "$REWARD_BALANCED" = true ]; then   # the buffer replaces DAPO's dynamic sampling
    DYNAMIC_SAMPLING=${DYNAMIC_SAMPLING:-false}
fi
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

ESTIMATOR=${ESTIMATOR:-ktae}                  # ktae | variance_weighted | grpo
TOKEN_WEIGHTING=${TOKEN_WEIGHTING:-counterfactual}   # counterfactual | none
CF_MODE=${CF_MODE:-counterfactual}
QUERY_PRESERVED=${QUERY_PRESERVED:-true}
RHO=${RHO:-0.25}
LENGTH_REWARD=${LENGTH_REWARD:-false}
LENGTH_SCORER=${LENGTH_SCORER:-surprisal}     # surprisal | ktae | counterfactual | my_pkg.module:function

"$PYTHON" -m verl_credit.main_ppo "${COMMON_OVERRIDES[@]}" \
    algorithm.adv_estimator="$ESTIMATOR" \
    credit.token_weighting="$TOKEN_WEIGHTING" \
    credit.counterfactual.mode="$CF_MODE" \
    actor_rollout_ref.actor.shuffle=false \
    credit.batching.query_preserved="$QUERY_PRESERVED" \
    credit.batching.reward_balanced.enabled="$REWARD_BALANCED" \
    credit.batching.reward_balanced.rho="$RHO" \
    credit.length_reward.enabled="$LENGTH_REWARD" \
    credit.length_reward.scorer="$LENGTH_SCORER" \
    "$@"
