"""The verl entry point and `verl-credit doctor`, each in a fresh Python process."""

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
import verl
loaded = "verl_credit.plugin" in sys.modules
heavy = "verl_credit.integration.trainer" in sys.modules
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1 import get_trainer_cls
try:
    core_algos.get_adv_estimator_fn("ktae")(token_level_rewards=None)
    stub_error = ""
except RuntimeError as err:
    stub_error = str(err)
print(json.dumps({"loaded": loaded, "heavy_at_import": heavy, "trainer": get_trainer_cls("credit").__name__,
                  "stub_error": stub_error}))
"""


def _python(code, **env):
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_verl_loads_the_plugin_and_registers_lazily():
    out = _python(PROBE)
    assert out["loaded"] is True
    assert out["heavy_at_import"] is False  # `import verl` stays cheap: the trainer loads with verl's v1
    assert out["trainer"] == "CreditPPOTrainer"
    assert "python -m verl_credit.main_ppo" in out["stub_error"]


def test_importing_the_trainer_module_first_also_registers():
    code = (
        "import json, verl_credit.integration.trainer\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\nfrom verl.trainer.ppo import core_algos\n"
        "print(json.dumps({'t': get_trainer_cls('credit').__name__, 'k': 'ktae' in core_algos.ADV_ESTIMATOR_REGISTRY}))"
    )
    assert _python(code) == {"t": "CreditPPOTrainer", "k": True}


def test_doctor_ok():
    proc = subprocess.run(
        [sys.executable, "-m", "verl_credit.cli", "doctor", "--json"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["verl_version"].startswith("0.9")
    assert report["plugin_loaded_by_entry_point"] is True
    assert "ktae" in report["plugin_estimators"] and "ktae" in report["stubs_in_verl_registry"]
    assert "credit" in report["trainer_modes"] and report["problems"] == []
    assert report["start_up_hook"] is True  # verl's validate_config runs verl_credit's start-up checks


def test_doctor_fails_with_reason_when_plugins_are_disabled():
    proc = subprocess.run(
        [sys.executable, "-m", "verl_credit.cli", "doctor"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"},
    )
    assert proc.returncode == 1
    assert "did not load verl_credit.plugin" in proc.stdout
    assert "VERL_USE_EXTERNAL_PLUGINS=none: verl loads no plugin" in proc.stdout
    assert "trainer mode 'credit' is not registered" in proc.stdout


def test_cli_parser_does_not_import_verl():
    """`verl-credit doctor` builds every subcommand's parser before it checks verl: none may import it."""
    out = _python(
        "import sys\n"
        "from verl_credit import cli\n"
        "try:\n"
        "    cli.main(['gym', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "import json\n"
        "print(json.dumps({'verl': 'verl' in sys.modules}))"
    )
    assert out == {"verl": False}


def test_doctor_explains_a_checkout_folder_shadowing_the_package(tmp_path):
    """Started from the parent of a checkout named ``verl_credit``, ``import verl_credit`` finds that
    folder as a namespace package; doctor names the folder and the fix instead of an AttributeError."""
    import subprocess
    import sys

    (tmp_path / "verl_credit" / "verl_credit").mkdir(parents=True)  # a checkout named verl_credit
    code = "import sys; from verl_credit.cli import main; sys.exit(main(['doctor']))"
    # the CLI is imported from the installed package; the probe (python -c) then runs in tmp_path
    proc = subprocess.run(
        [sys.executable, "-c", f"import os, sys; sys.path.remove(''); os.chdir({str(tmp_path)!r}); {code}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"finds the folder {tmp_path / 'verl_credit'}" in proc.stdout
    assert "Run from another folder" in proc.stdout
