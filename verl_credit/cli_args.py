"""Argument helpers shared by the ``verl-credit`` subcommands (``explain``, ``gym``); no heavy imports.

Public API:
    UsageError                 -- a mistake in the command line: printed as one line, exit status 2.
    usage_line(prog, err)      -- ``<prog>: error: <message>``, one line (argparse's style).
    usage_exit(prog, err)      -- print it on stderr and exit 2.
    name_list(values)          -- ``["grpo,ktae", "counterfactual"]`` -> ``["grpo", "ktae", "counterfactual"]``.
    positive_int(text)         -- argparse ``type=``: an integer >= 1 (0 is an error, not "the default").
    import_modules(modules)    -- import the user's modules (their estimators and explain views register
                                  on import); a module that does not exist is a UsageError naming it.

One list syntax in every subcommand: ``--estimators`` and ``--import`` take names separated by
spaces, commas, or both (``--estimators grpo ktae``, ``--estimators grpo,ktae``), and may be repeated.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable

__all__ = ["UsageError", "usage_line", "usage_exit", "name_list", "positive_int", "import_modules"]


class UsageError(ValueError):
    """A user error in the command's arguments (not a bug): shown as one line, exit status 2."""


def usage_line(prog: str, err: BaseException | str) -> str:
    """``<prog>: error: <message>`` on one line, whatever the exception held."""
    message = " ".join(str(err).split())
    for prefix in ("explain: ", "gym: "):  # library messages name their tool; the prog says it already
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return f"{prog}: error: {message}"


def usage_exit(prog: str, err: BaseException | str) -> None:
    """Print :func:`usage_line` on stderr and raise SystemExit(2) (argparse's ``parser.error`` without the usage)."""
    sys.stderr.write(usage_line(prog, err) + "\n")
    raise SystemExit(2)


def name_list(values: Iterable[str] | None) -> list[str]:
    """Names given as separate arguments and/or comma-separated, in order, blanks dropped."""
    return [name.strip() for value in values or () for name in str(value).split(",") if name.strip()]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def import_modules(modules: Iterable[str], flag: str = "--import") -> None:
    """Import each module; a missing module (not a missing import inside it) is a UsageError."""
    for module in modules:
        if not all(part.isidentifier() for part in module.split(".")):
            raise UsageError(f"{flag} {module!r}: not a dotted module name")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is not None and (module == err.name or module.startswith(err.name + ".")):
                raise UsageError(
                    f"{flag} {module}: no module named {err.name!r} (is it installed, or on PYTHONPATH?)"
                ) from None
            raise  # the user's module itself failed to import something: its traceback is what helps


def add_import_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--import MODULE ...`` (spaces or commas, repeatable) into ``args.imports``; see :func:`import_modules`."""
    parser.add_argument("--import", dest="imports", nargs="+", action="extend", default=[], metavar="MODULE", help=help)
