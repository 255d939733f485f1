"""Defaults the gym's CLI help needs, kept free of verl (``verl-credit doctor`` builds the gym's parser
and must not import verl).

    DEFAULT_VARIANT  -- the weight variant plain ``oracle`` / ``anti_oracle`` run (``gym.oracle``); change
                        it here, in one place (docs/gym.md names it).
    LearnConfig      -- the learning loop's budget and optimiser settings (``gym.learn`` re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_VARIANT", "LearnConfig"]

DEFAULT_VARIANT = "lines:mask:fmt0"


@dataclass(frozen=True)
class LearnConfig:
    """Attributes:
    steps: RL steps per run. prompts_per_step, group_size: B = their product. max_new_tokens: 48.
    lr: AdamW learning rate (1e-4; 1e-3 and 3e-4 collapsed GRPO on this model). ppo_epochs (1),
    mini_batches (2), clip_ratio (0.2). eval_every: steps between held-out evaluations (10);
    eval_samples: samples per held-out problem (4). rho: reward-balanced share (0.25).
    train_prompts: None (a fresh prompt every time) or the size of a fixed training set visited in
    epochs (prompts recur; >= prompts_per_step). eval_replicate: evaluate grpo's and the oracle's runs
    a second time with other sampling seeds, to measure the evaluation noise of an AUC and of the paired
    difference oracle - grpo (True; costs those runs one more evaluation per evaluated step).
    """

    steps: int = 60
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 48
    lr: float = 1e-4
    ppo_epochs: int = 1
    mini_batches: int = 2
    clip_ratio: float = 0.2
    eval_every: int = 10
    eval_samples: int = 4
    rho: float = 0.25
    train_prompts: int | None = None
    eval_replicate: bool = True

    def __post_init__(self):
        if self.train_prompts is not None and not (
            isinstance(self.train_prompts, int) and self.train_prompts >= self.prompts_per_step
        ):
            raise ValueError(
                f"--train-prompts must be an integer >= the prompts per step ({self.prompts_per_step}), "
                f"got {self.train_prompts!r}"
            )
