"""Pure torch maths of verl_credit: no verl imports, plain tensors in and out.

Modules:
    groups         -- rollout groups from uids, group-relative outcome advantage (GRPO / Dr.GRPO).
    fisher         -- two-sided Fisher exact test on batches of 2x2 tables (exact, or the KTAE authors' float32).
    ktae           -- key-token advantage estimation (KTAE), vectorised and a loop reference.
    counterfactual -- span importances and counterfactual token weights, with the ablation controls.
    variance       -- DRO's R3: variance-weighted reference-answer reward.
    length_reward  -- Bingo's significance-aware length reward: scorers, shaping, lambda_dyn schedule.
    batching       -- query-preserved mini-batches: group packing and per-rank length balancing.
    reward_buffer  -- the reward-balanced buffer's selection policy.
    token_flip     -- the token-flipping diagnostic.
    token_filter   -- the high-entropy ("80/20") token filter: threshold over the step batch, masked advantages.
"""
