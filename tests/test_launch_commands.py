"""Every launch command in README.md and docs/ is complete and passes the dry run as written.

A launch command is a line of a fenced shell block that starts with ``python -m verl_credit.main_ppo``
or ``python -m verl.trainer.main_ppo`` (with its ``\\`` continuations). Each is parsed as the shell
would (``$HOME`` points at a temporary folder holding the data files it names, written in verl's
format), composed with its entry point's hydra config, and run through the dry run's checks
(``verl_credit.integration.startup.dry_run``). A command that imports a user module
(``credit.import_modules``) gets the module from the README's own Python block that starts with
``# <package>/<module>.py``. One command also runs end to end as a subprocess with
``VERL_CREDIT_DRY_RUN=1``. (The recipes' commands are covered by test_recipes.py.)
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import verl_credit.main_ppo  # noqa: F401  (registers the credit schema)
from verl_credit import registry
from verl_credit.data import verl_record, write_parquet
from verl_credit.integration import startup

pytestmark = pytest.mark.filterwarnings("ignore:Disabled critic:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY_POINTS = {
    "verl_credit.main_ppo": ("verl_credit.conf", "credit_trainer"),
    "verl.trainer.main_ppo": ("verl.trainer.config", "ppo_trainer"),
}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def launch_commands(text: str) -> list[str]:
    """The launch commands of the fenced shell blocks of ``text``, continuations joined, comments dropped."""
    commands = []
    for lang, body in FENCE.findall(text):
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not re.match(r"(\w+=\S+\s+)*python3? -m (verl_credit\.main_ppo|verl\.trainer\.main_ppo)\b", line):
                continue
            parts = [line]
            while parts[-1].endswith("\\") and i < len(lines):
                parts[-1] = parts[-1][:-1]
                parts.append(lines[i].strip())
                i += 1
            commands.append(" ".join(p.split(" #")[0].strip() for p in parts))
    return commands


def python_blocks(text: str) -> dict[str, str]:
    """{"my_pkg/estimators.py": source} for the fenced Python blocks whose first line is such a path comment."""
    out = {}
    for lang, body in FENCE.findall(text):
        first = body.splitlines()[0] if body.strip() else ""
        if lang == "python" and re.match(r"# [\w/]+\.py$", first):
            out[first[2:]] = body
    return out


COMMANDS = [(doc.relative_to(ROOT).as_posix(), cmd) for doc in DOCS for cmd in launch_commands(doc.read_text())]


def test_the_readme_has_launch_commands_for_both_entry_points():
    entries = {re.search(r"-m (\S+)", cmd).group(1) for _, cmd in COMMANDS}
    assert entries == set(ENTRY_POINTS), entries
    assert launch_commands("```bash\nA=1 python -m verl.trainer.main_ppo a=1 \\\n  b=2  # note\n```\n") == [
        "A=1 python -m verl.trainer.main_ppo a=1 b=2"
    ]


def _argv(command: str, home: Path) -> tuple[str, list[str]]:
    """(entry module, hydra overrides) of ``command`` as bash would pass them, with HOME=home."""
    text = command.replace("${HOME}", str(home)).replace("$HOME", str(home))
    assert "$" not in text and "~" not in text, f"use $HOME, not other variables or ~: {command!r}"
    words = shlex.split(text)
    while "=" in words[0]:
        words.pop(0)  # VAR=value prefixes
    assert words[:2] in (["python", "-m"], ["python3", "-m"]), command
    return words[2], words[3:]


def _write_data(overrides: list[str]) -> None:
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+") in ("data.train_files", "data.val_files"):
            path = Path(value)
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [verl_record("What is 2+2?", "4", data_source="openai/gsm8k", split="t", index=i) for i in range(4)]
            write_parquet(rows, path)


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}:{k}" for k, (d, _) in enumerate(COMMANDS)])
def test_launch_command_is_complete_and_passes_the_dry_run(doc, command, tmp_path, monkeypatch, capsys):
    home = tmp_path
    assert "..." not in command, f"{doc}: a launch command must be complete, got {command!r}"
    entry, overrides = _argv(command, home)
    _write_data(overrides)
    modules = [
        m
        for item in overrides
        if item.lstrip("+").startswith("credit.import_modules=")
        for m in item.split("=", 1)[1].strip("[]").split(",")
    ]
    if modules:  # the user module the README shows, written where Python finds it
        sources = python_blocks((ROOT / doc).read_text())
        for module in modules:
            rel = module.replace(".", "/") + ".py"
            assert rel in sources, f"{doc}: {command!r} imports {module}, but no ```python block starts with # {rel}"
            target = home / "user_code" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(sources[rel])
            monkeypatch.delitem(sys.modules, module, raising=False)
        monkeypatch.syspath_prepend(str(home / "user_code"))
        monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    module, name = ENTRY_POINTS[entry]
    with initialize_config_module(config_module=module, version_base=None):
        config = compose(config_name=name, overrides=overrides)
    try:
        startup.dry_run(config)
    finally:
        for module_name in modules:
            sys.modules.pop(module_name, None)
    assert "nothing launched" in capsys.readouterr().err
    estimator = config.algorithm.adv_estimator
    if estimator != "grpo" or config.get("credit") is not None:
        assert config.trainer.v1.trainer_mode == "credit"


def test_the_headline_command_passes_the_dry_run_end_to_end(tmp_path):
    doc, command = COMMANDS[0]
    assert doc == "README.md"
    _, overrides = _argv(command, tmp_path)
    _write_data(overrides)
    env = {**os.environ, "HOME": str(tmp_path), startup.DRY_RUN_ENV: "1"}
    proc = subprocess.run(
        ["bash", "-c", f"cd {shlex.quote(str(tmp_path))} && {command} hydra.run.dir={tmp_path / 'hydra'}"],
        env={**env, "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing launched" in proc.stderr and "ray init kwargs" not in proc.stdout
    assert f"train_files: {tmp_path}/data/gsm8k/train.parquet" in proc.stdout
