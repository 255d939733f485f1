"""The docs document what a verl user needs: every ``credit.*`` key in the config reference
(docs/configuration.md), the two commands (README.md), and every recipe (docs/recipes.md); each recipe README
puts reported numbers beside a command."""

import dataclasses
import re
from pathlib import Path

from verl_credit.config import CreditConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
RECIPES = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")


def _leaves(cls, prefix="credit"):
    for f in dataclasses.fields(cls):
        factory = f.default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            yield from _leaves(factory, f"{prefix}.{f.name}")
        else:
            yield prefix, f.name


def _reference_rows() -> list[str]:
    section = CONFIGURATION.split("## Config reference", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `credit.")]


def _undocumented(rows: list[str]) -> list[str]:
    missing = []
    for parent, leaf in _leaves(CreditConfig):
        full = f"{parent}.{leaf}"
        ok = any(
            f"`{full}`" in row or (row.split("|")[1].strip().startswith(f"`{parent}.") and re.search(rf"`{leaf}`", row))
            for row in rows
        )
        if not ok:
            missing.append(full)
    return missing


def test_config_reference_lists_every_credit_key():
    """A key is documented by a row of its section naming it: `credit.a.b` or `b` next to `credit.a.x`."""
    missing = _undocumented(_reference_rows())
    assert not missing, f"docs/configuration.md config reference lacks: {missing}"
    assert "docs/configuration.md" in README, "the README does not link the config reference"


def test_the_key_check_can_fail():
    rows = _reference_rows()
    dropped = [row for row in rows if not row.startswith("| `credit.ktae.fisher`")]
    assert len(dropped) == len(rows) - 1
    assert _undocumented(dropped) == ["credit.ktae.fisher"]


def test_two_commands_and_recipes_are_documented():
    commands = README.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    assert "bash tools/demo.sh" in commands and "bash tools/test.sh" in commands
    assert commands.index("bash tools/demo.sh") < commands.index("bash tools/test.sh")
    demo = (ROOT / "tools" / "demo.sh").read_text().splitlines()
    assert [line for line in demo if line.startswith("verl-credit")] == [
        "verl-credit doctor",
        'verl-credit explain "$@"',
    ]
    assert "docs/recipes.md" in README, "the README does not link the recipes page"
    for script in sorted(ROOT.glob("recipes/*/run_*.sh")):
        rel = script.relative_to(ROOT).as_posix()
        assert rel in RECIPES, f"docs/recipes.md does not mention {rel}"
        readme = (script.parent / "README.md").read_text(encoding="utf-8")
        assert f"bash {rel}" in readme, f"{script.parent.name}/README.md shows no command of {rel}"
        header = [line for line in readme.splitlines() if line.startswith("|") and "reported" in line]
        assert header and header[0].rstrip().endswith("| command |"), (
            f"{script.parent.name}: no reported-vs-command table"
        )
