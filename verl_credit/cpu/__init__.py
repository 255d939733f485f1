"""verl on a CPU: a platform and a rollout, so real verl PPO steps run on a laptop.

A correctness check, not a way to train: ``verl-credit smoke`` runs a few PPO steps of a tiny
random Qwen2 through verl's own trainer, workers, FSDP2 engine (gloo), TransferQueue and agent
loop, so an estimator can be checked inside verl before a GPU run.

Inert unless selected. A process selects it with the environment that :func:`cpu_env` returns:

    VERL_PLATFORM=cpu                         verl's platform registry picks :class:`CPUPlatform`
    VERL_USE_EXTERNAL_MODULES=verl_credit.cpu  every ``import verl`` (driver, TaskRunner, Ray
                                              workers) imports this package, which registers the
                                              platform and the ``hf_cpu`` rollout
    VERL_ENGINE_DEVICE=cuda                   verl registers its FSDP engine for cuda/npu only;
                                              the engine itself is device-agnostic

and a config with ``actor_rollout_ref.rollout.name=hf_cpu``, ``actor.strategy=fsdp2`` (FSDP1
refuses CPU parameters), ``model.override_config.attn_implementation=sdpa`` and Ray started with
logical GPUs (see :mod:`verl_credit.cpu.smoke` for the full list).
"""

from __future__ import annotations

import os

__all__ = ["cpu_env", "active", "activate"]

ENV = {
    "VERL_PLATFORM": "cpu",
    "VERL_USE_EXTERNAL_MODULES": "verl_credit.cpu",
    "VERL_ENGINE_DEVICE": "cuda",
}


def cpu_env() -> dict[str, str]:
    """The environment variables that select verl-on-CPU in a process and its Ray workers."""
    return dict(ENV)


def active() -> bool:
    """Is this process running verl on the CPU platform?"""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def activate() -> None:
    """Select verl-on-CPU in this process (and the Ray workers it starts): set :func:`cpu_env` and
    register the platform and the rollout (idempotent)."""
    os.environ.update(ENV)
    _register()


def _register() -> None:
    from verl_credit.cpu import platform as _platform
    from verl_credit.cpu import rollout as _rollout

    _platform.install_gloo_backend()
    _platform.limit_threads()
    _rollout.register()


if active():
    _register()
