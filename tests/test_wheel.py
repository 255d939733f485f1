"""The package as a user installs it: a wheel built from this checkout, installed into a fresh virtual
environment, carries its hydra config and passes ``verl-credit doctor``.

The fresh environment gets verl, torch and the other dependencies from this test run's environment
through a ``.pth`` line (installing them again would take minutes and the network); verl_credit itself
comes only from the wheel: the checkout's editable-install hook is not active there.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


def test_built_wheel_installs_into_a_clean_venv_and_passes_doctor(tmp_path):
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", ROOT]
    )
    wheels = list((tmp_path / "dist").glob("verl_credit-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheels[0]])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = _run(
        [python, "-c", "import verl_credit, pathlib; print(pathlib.Path(verl_credit.__file__).parent)"], cwd=tmp_path
    ).strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the checkout
    assert (Path(where) / "conf" / "credit_trainer.yaml").is_file()
    out = _run([venv / "bin" / "verl-credit", "doctor"], cwd=tmp_path)
    assert "status             OK" in out, out
