"""The package's layering, read from the source with ``ast`` (nothing is imported).

- Nothing under ``verl_credit/integration/`` imports ``verl_credit.cli``: the layer that hooks into
  verl does not reach up into the command line (the doctor's checks live in ``verl_credit.diagnose``).
- No module under ``verl_credit/`` is longer than ``MAX_LINES`` unless ``LONG_MODULES`` names it with
  the reason it should stay whole.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "verl_credit"
MAX_LINES = 600
# path relative to verl_credit/ -> why it stays whole. Keep it empty: split a module that grows
# past MAX_LINES by concern (see core/length_reward/ and explain/views/) rather than list it here.
LONG_MODULES: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (also inside functions), as absolute names.

    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule); relative imports are
    resolved against the file's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def test_imported_modules_sees_every_form(tmp_path, monkeypatch):
    """The scanner itself: absolute, from-, relative and function-level imports of cli are all found."""
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "verl_credit")
    forms = {
        "a.py": "import verl_credit.cli\n",
        "b.py": "from verl_credit import cli\n",
        "c.py": "def f():\n    from verl_credit.cli import main\n",
        "d.py": "from .. import cli\n",
        "e.py": "from verl_credit import client\n",  # a different module: not cli
    }
    folder = tmp_path / "verl_credit" / "integration"
    folder.mkdir(parents=True)
    found = {}
    for name, code in forms.items():
        (folder / name).write_text(code)
        found[name] = "verl_credit.cli" in imported_modules(folder / name)
    assert found == {"a.py": True, "b.py": True, "c.py": True, "d.py": True, "e.py": False}


def test_integration_does_not_import_the_cli():
    files = sorted((PACKAGE / "integration").rglob("*.py"))
    assert files, "no module found under verl_credit/integration"
    offenders = [
        str(f.relative_to(PACKAGE.parent))
        for f in files
        if any(m == "verl_credit.cli" or m.startswith("verl_credit.cli.") for m in imported_modules(f))
    ]
    assert offenders == [], f"these modules import verl_credit.cli (use verl_credit.diagnose): {offenders}"


def test_no_module_is_over_the_line_limit():
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in LONG_MODULES:
            long[name] = lines
    assert long == {}, f"modules over {MAX_LINES} lines (split them by concern, or explain in LONG_MODULES): {long}"
    stale = [name for name in LONG_MODULES if not (PACKAGE / name).is_file()]
    assert stale == [], f"LONG_MODULES names modules that do not exist: {stale}"
