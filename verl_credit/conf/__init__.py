"""Hydra configs of verl_credit (``credit_trainer.yaml``)."""
