"""The only part of verl_credit that imports verl internals (verl 0.9.x, V1 trainer).

verl_registry  -- stubs for plugin estimator names in verl's ``register_adv_est`` registry.
tq_io          -- reading TransferQueue rows with row/field checks; stage fields padded as absent.
tq_batch       -- TransferQueue rows <-> CreditBatch / nested advantages.
scoring_stage  -- ``ScoringStageMixin``: the extra no-grad forward stage before the advantage step.
worker         -- ``CreditActorRolloutRefWorker.compute_credit_scores``: that stage on the actor workers.
length_reward  -- ``LengthRewardMixin``: shapes ``rm_scores`` before the advantage step.
batching       -- ``QueryPreservedBatchingMixin`` (whole groups per mini-batch), start-up checks.
buffer         -- ``RewardBalancedReplayBuffer`` (verl custom sampler) and its trainer mixin.
token_flip     -- ``TokenFlipDiagnosticMixin``: token-flip shares after the actor update.
trainer        -- ``CreditPPOTrainer``, trainer mode ``credit``.
startup        -- the trainer choice and every check before Ray (both entry points, the dry run).
verl_hook      -- wraps verl's ``validate_config`` so ``python -m verl.trainer.main_ppo`` runs ``startup``.
"""
