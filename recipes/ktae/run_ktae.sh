#!/usr/bin/env bash
# KTAE (Sun et al., arXiv 2505.16826) over GRPO or DAPO, in the paper's setup (METHODS.md section 1):
# MATH level 3-5, 1024 prompts x 16 samples per step, mini-batch 128 prompts, lr 1e-6, responses up to 3072, no KL.
#
#   bash recipes/ktae/run_ktae.sh                       # 8 GPUs, Qwen2.5-Math-7B, GRPO + KTAE
#   ALGO=dapo bash recipes/ktae/run_ktae.sh             # DAPO + KTAE
#   SIZE=1gpu bash recipes/ktae/run_ktae.sh             # one GPU, Qwen2.5-Math-1.5B
#   DRY_RUN=1 bash recipes/ktae/run_ktae.sh             # compose + validate the config, launch nothing
#   bash recipes/ktae/run_ktae.sh trainer.total_epochs=1   # extra arguments: hydra overrides, applied last
#
# Shared knobs (model, data, batch sizes, GRPO/DAPO, logging): recipes/common.sh. All come from the environment.
set -xeuo pipefail

RECIPE=ktae
DATASET=${DATASET:-math}
ALGO=${ALGO:-grpo}
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- KTAE (credit.ktae.*): the authors' defaults
KTAE_ALPHA=${KTAE_ALPHA:-1.0}                 # weight of the Fisher exact-test term
KTAE_BETA=${KTAE_BETA:-1.0}                   # weight of the information gain
KTAE_USE_TF=${KTAE_USE_TF:-true}              # add the BM25-style frequency ratio to the direction
KTAE_TOP=${KTAE_TOP:-1.0}                     # key-token values lie in [-top, top]

"$PYTHON" -m verl_credit.main_ppo "${COMMON_OVERRIDES[@]}" \
    algorithm.adv_estimator=ktae \
    credit.ktae.alpha="$KTAE_ALPHA" \
    credit.ktae.beta="$KTAE_BETA" \
    credit.ktae.use_tf="$KTAE_USE_TF" \
    credit.ktae.top="$KTAE_TOP" \
    "$@"
