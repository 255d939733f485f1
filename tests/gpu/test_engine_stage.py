"""The scoring stage through verl's real FSDP engine (one process) vs a plain forward:
``tests/gpu/engine_stage_check.py``, on the CPU platform here and on CUDA where there is a GPU."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHECK = Path(__file__).with_name("engine_stage_check.py")


def _run(device: str, tmp_path) -> str:
    proc = subprocess.run(
        [sys.executable, str(CHECK), "--device", device, "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_engine_stage_check_on_cpu(tmp_path):
    out = _run("cpu", tmp_path)
    for case in ("fp32_rmpad", "fp32_rmpad_naive", "fp32_padded"):  # tree, naive, tree on padded rows
        assert f"CASE {case}: ok" in out, out[-3000:]
    assert "PASS: device cpu" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_engine_stage_check_on_gpu(tmp_path):
    out = _run("cuda", tmp_path)
    assert "PASS: device cuda" in out and "CASE bf16_rmpad:" in out
