"""Defaults of the gym's methods that the CLI's help text needs (no torch, no verl: ``verl-credit doctor``
builds the gym's parser and must stay light).

    DEFAULT_VARIANT  -- the weight variant plain ``oracle`` / ``anti_oracle`` run (``gym.oracle``); change
                        it here, in one place (docs/gym.md names it).
"""

__all__ = ["DEFAULT_VARIANT"]

DEFAULT_VARIANT = "floor0.2"
