"""The only part of verl_credit that imports verl internals (verl 0.9.x, V1 trainer).

verl_registry  -- stubs for plugin estimator names in verl's ``register_adv_est`` registry.
tq_batch       -- TransferQueue rows <-> CreditBatch / nested advantages.
length_reward  -- ``LengthRewardMixin``: shapes ``rm_scores`` before the advantage step.
batching       -- ``QueryPreservedBatchingMixin`` (whole groups per mini-batch), start-up checks.
buffer         -- ``RewardBalancedReplayBuffer`` (verl custom sampler) and its trainer mixin.
token_flip     -- ``TokenFlipDiagnosticMixin``: token-flip shares after the actor update.
trainer        -- ``CreditPPOTrainer``, trainer mode ``credit``.
"""
