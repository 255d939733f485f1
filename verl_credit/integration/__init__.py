"""The only part of verl_credit that imports verl internals (verl 0.9.x, V1 trainer).

verl_registry  -- stubs for plugin estimator names in verl's ``register_adv_est`` registry.
tq_batch       -- TransferQueue rows <-> CreditBatch / nested advantages.
trainer        -- ``CreditPPOTrainer``, trainer mode ``credit``.
"""
