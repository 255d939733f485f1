"""A real PPO step through verl's own entry point: ``python -m verl.trainer.main_ppo
algorithm.adv_estimator=ktae +credit.ktae.top=0.5`` runs verl_credit's trainer (CPU, tiny model).

verl_credit.cpu.smoke launches ``verl_credit.main_ppo``; this test launches verl's module with the same
overrides and environment, so what it checks is the hook: verl's ``main`` (run as ``__main__``) calls
the wrapped ``validate_config``, which selects trainer mode ``credit`` before Ray starts, and the
TaskRunner then builds ``CreditPPOTrainer`` (its KTAE metrics are logged).
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from verl_credit.cpu.smoke import build_workspace, cpu_env, smoke_overrides

pytestmark = pytest.mark.timeout(900)


def test_verl_main_runs_a_plugin_estimator_step(tmp_path):
    ws = build_workspace(tmp_path / "ws")
    metrics = tmp_path / "metrics.jsonl"
    env = {**os.environ, **cpu_env(), "VERL_FILE_LOGGER_PATH": str(metrics), "TQ_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("VERL_CREDIT_DRY_RUN", None)
    overrides = [*smoke_overrides(ws, "ktae", steps=1), "+credit.ktae.top=0.5", f"hydra.run.dir={tmp_path / 'hydra'}"]
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = proc.communicate(timeout=780)
    except subprocess.TimeoutExpired:
        log = "timed out after 780 s"
    finally:  # the run's whole session: Ray leaves raylet and workers behind when the driver ends
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    assert proc.returncode == 0, log[-6000:]
    assert "algorithm.adv_estimator=ktae: trainer.v1.trainer_mode=sync -> credit" in log
    steps = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    assert [s["step"] for s in steps] == [1]
    data = steps[0]["data"]
    assert data["credit/ktae/mixed_groups/fraction"] > 0  # logged by CreditPPOTrainer's estimator step
    assert data["actor/grad_norm"] > 0
