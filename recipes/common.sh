# Knobs shared by every recipe. Sourced by recipes/*/run_*.sh after they set their own defaults
# (DATASET, ALGO, RECIPE); builds COMMON_OVERRIDES, the hydra overrides of the run.
# Every variable can be set from the environment, e.g. `MODEL_PATH=... N=8 bash recipes/ktae/run_ktae.sh`.
#
# Presets (DATASET x SIZE), from the papers the recipes reproduce:
#   math  8gpu  Qwen2.5-Math-7B, 1024 prompts x n 16, mini-batch 128, response 3072   (KTAE paper)
#   math  1gpu  Qwen2.5-Math-1.5B, 64 prompts x n 8, mini-batch 16, response 2048
#   gsm8k 8gpu  Qwen3-1.7B, 256 prompts x n 8, mini-batch 64, response 1024          (counterfactual paper's model)
#   gsm8k 1gpu  Qwen3-1.7B, 64 prompts x n 8, mini-batch 16, response 1024
# ALGO: grpo, or dapo = clip-higher (0.28), dynamic sampling (algorithm.filter_groups on "acc"),
#   overlong reward shaping (reward manager "dapo"), token-mean loss; no KL in both.
# ENTROPY_QUANTILE=0.2: the high-entropy ("80/20") token filter over whatever the recipe computes
#   (credit.token_filter, docs/token_filter.md); empty (default) = off. TOKEN_FILTER_DENOMINATOR: all | kept.
# DRY_RUN=1: compose, resolve and validate the config (verl_credit.main_ppo's dry run); launch nothing.

# ---- preset
DATASET=${DATASET:-math}                      # math (MATH level 3-5 -> MATH-500) | gsm8k (GSM8K train -> test)
SIZE=${SIZE:-8gpu}                            # 8gpu: one 8-GPU node | 1gpu: one GPU
case "$DATASET-$SIZE" in
    math-8gpu)
        : "${MODEL_PATH:=Qwen/Qwen2.5-Math-7B}" "${TRAIN_PROMPTS:=1024}" "${MINI_PROMPTS:=128}" "${N:=16}"
        : "${MAX_PROMPT:=1024}" "${MAX_RESPONSE:=3072}" "${NGPUS:=8}" "${ROLLOUT_TP:=2}" ;;
    math-1gpu)
        : "${MODEL_PATH:=Qwen/Qwen2.5-Math-1.5B}" "${TRAIN_PROMPTS:=64}" "${MINI_PROMPTS:=16}" "${N:=8}"
        : "${MAX_PROMPT:=1024}" "${MAX_RESPONSE:=2048}" "${NGPUS:=1}" "${ROLLOUT_TP:=1}" ;;
    gsm8k-8gpu)
        : "${MODEL_PATH:=Qwen/Qwen3-1.7B}" "${TRAIN_PROMPTS:=256}" "${MINI_PROMPTS:=64}" "${N:=8}"
        : "${MAX_PROMPT:=512}" "${MAX_RESPONSE:=1024}" "${NGPUS:=8}" "${ROLLOUT_TP:=1}" ;;
    gsm8k-1gpu)
        : "${MODEL_PATH:=Qwen/Qwen3-1.7B}" "${TRAIN_PROMPTS:=64}" "${MINI_PROMPTS:=16}" "${N:=8}"
        : "${MAX_PROMPT:=512}" "${MAX_RESPONSE:=1024}" "${NGPUS:=1}" "${ROLLOUT_TP:=1}" ;;
    *) echo "DATASET must be math or gsm8k and SIZE 8gpu or 1gpu, got DATASET=$DATASET SIZE=$SIZE" >&2; exit 2 ;;
esac
NNODES=${NNODES:-1}

# ---- data (write it with recipes/data/prepare_gsm8k.py / prepare_math.py)
DATA_DIR=${DATA_DIR:-$HOME/data}
TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/$DATASET/train.parquet}
VAL_FILE=${VAL_FILE:-$DATA_DIR/$DATASET/test.parquet}
THINKING=${THINKING:-false}                   # Qwen3 chat template: thinking mode off (ignored by other models)

# ---- optimisation and sampling
LR=${LR:-1e-6}
TEMPERATURE=${TEMPERATURE:-1.0}
EPOCHS=${EPOCHS:-10}
PPO_MAX_TOKENS=${PPO_MAX_TOKENS:-$(( (MAX_PROMPT + MAX_RESPONSE) * 2 ))}   # dynamic batch: tokens per GPU
GPU_MEM=${GPU_MEM:-0.6}                       # vLLM's share of GPU memory
USE_KL=${USE_KL:-false}
KL_COEF=${KL_COEF:-0.001}

# ---- base algorithm
ALGO=${ALGO:-grpo}
case "$ALGO" in
    grpo) : "${CLIP_HIGH:=0.2}" "${DYNAMIC_SAMPLING:=false}" "${OVERLONG:=false}" "${REWARD_MANAGER:=naive}" ;;
    dapo) : "${CLIP_HIGH:=0.28}" "${DYNAMIC_SAMPLING:=true}" "${OVERLONG:=true}" "${REWARD_MANAGER:=dapo}" ;;
    *) echo "ALGO must be grpo or dapo, got '$ALGO'" >&2; exit 2 ;;
esac
CLIP_LOW=${CLIP_LOW:-0.2}
OVERLONG_LEN=${OVERLONG_LEN:-512}             # DAPO: the last OVERLONG_LEN tokens before the limit cost reward
OVERLONG_PENALTY=${OVERLONG_PENALTY:-1.0}

# ---- high-entropy token filter (off unless ENTROPY_QUANTILE is set)
ENTROPY_QUANTILE=${ENTROPY_QUANTILE:-}
TOKEN_FILTER_DENOMINATOR=${TOKEN_FILTER_DENOMINATOR:-all}

# ---- logging, checkpoints, launcher
PROJECT=${PROJECT:-verl_credit}
EXP_NAME=${EXP_NAME:-${RECIPE:-run}-$ALGO-$DATASET-$SIZE${ENTROPY_QUANTILE:+-entropy$ENTROPY_QUANTILE}}
LOGGER=${LOGGER:-'["console"]'}               # e.g. '["console","wandb"]'
SAVE_FREQ=${SAVE_FREQ:-50}
TEST_FREQ=${TEST_FREQ:-10}
PYTHON=${PYTHON:-python3}
export VERL_CREDIT_DRY_RUN=${DRY_RUN:-0}

COMMON_OVERRIDES=(
    algorithm.use_kl_in_reward=false
    algorithm.filter_groups.enable="$DYNAMIC_SAMPLING"
    algorithm.filter_groups.metric=acc
    data.train_files="$TRAIN_FILE"
    data.val_files="$VAL_FILE"
    data.train_batch_size="$TRAIN_PROMPTS"
    data.max_prompt_length="$MAX_PROMPT"
    data.max_response_length="$MAX_RESPONSE"
    data.filter_overlong_prompts=true
    +data.apply_chat_template_kwargs.enable_thinking="$THINKING"
    actor_rollout_ref.model.path="$MODEL_PATH"
    actor_rollout_ref.model.use_remove_padding=true
    actor_rollout_ref.model.enable_gradient_checkpointing=true
    actor_rollout_ref.actor.optim.lr="$LR"
    actor_rollout_ref.actor.ppo_mini_batch_size="$MINI_PROMPTS"
    actor_rollout_ref.actor.use_dynamic_bsz=true
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$PPO_MAX_TOKENS"
    actor_rollout_ref.actor.clip_ratio_low="$CLIP_LOW"
    actor_rollout_ref.actor.clip_ratio_high="$CLIP_HIGH"
    actor_rollout_ref.actor.loss_agg_mode=token-mean
    actor_rollout_ref.actor.use_kl_loss="$USE_KL"
    actor_rollout_ref.actor.kl_loss_coef="$KL_COEF"
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.n="$N"
    actor_rollout_ref.rollout.temperature="$TEMPERATURE"
    actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP"
    actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEM"
    reward.reward_manager.name="$REWARD_MANAGER"
    reward.custom_reward_function.path=pkg://verl_credit.rewards
    reward.custom_reward_function.name=compute_score
    +reward.reward_kwargs.max_resp_len="$MAX_RESPONSE"
    +reward.reward_kwargs.overlong_buffer_cfg.enable="$OVERLONG"
    +reward.reward_kwargs.overlong_buffer_cfg.len="$OVERLONG_LEN"
    +reward.reward_kwargs.overlong_buffer_cfg.penalty_factor="$OVERLONG_PENALTY"
    +reward.reward_kwargs.overlong_buffer_cfg.log=false
    trainer.project_name="$PROJECT"
    trainer.experiment_name="$EXP_NAME"
    trainer.logger="$LOGGER"
    trainer.n_gpus_per_node="$NGPUS"
    trainer.nnodes="$NNODES"
    trainer.save_freq="$SAVE_FREQ"
    trainer.test_freq="$TEST_FREQ"
    trainer.total_epochs="$EPOCHS"
)
if [ -n "$ENTROPY_QUANTILE" ]; then
    COMMON_OVERRIDES+=(
        credit.token_filter.entropy_quantile="$ENTROPY_QUANTILE"
        credit.token_filter.denominator="$TOKEN_FILTER_DENOMINATOR"
    )
fi
