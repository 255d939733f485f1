"""Pure torch maths of verl_credit: no verl imports, plain tensors in and out.

Modules:
    groups  -- rollout groups from uids, group-relative outcome advantage (GRPO / Dr.GRPO).
    fisher  -- two-sided Fisher exact test on batches of 2x2 tables.
    ktae    -- key-token advantage estimation (KTAE), vectorised and a loop reference.
    batching -- cancellation-preserving batching: group packing, reward-balanced pool, token flips.
    length_reward -- Bingo's significance-aware length reward: scorers, shaping, lambda_dyn schedule.
"""
