"""``verl-credit gym`` arguments: ``--steps 0`` / ``--seeds 0`` are errors, ``--estimators`` and
``--import`` take the list syntax of ``explain``, and a user error is one line with exit status 2
(before any model is built)."""

import argparse

import pytest

from verl_credit.cli import main
from verl_credit.gym.cli import DEFAULT_METHODS, add_arguments, check_args

PROG = "verl-credit gym: error: "


def _parse(argv):
    parser = argparse.ArgumentParser(prog="verl-credit gym")
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("flag", ["--steps", "--seeds"])
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_steps_and_seeds_must_be_positive(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["gym", "--quick", "--out", str(tmp_path), flag, value])
    assert stop.value.code == 2
    assert f"{PROG}argument {flag}: " in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing may run before the arguments are checked"


def test_steps_zero_in_a_namespace_is_refused_too():
    args = _parse(["--quick"])
    args.steps = 0
    with pytest.raises(ValueError, match="--steps must be an integer >= 1, got 0"):
        check_args(args)


def test_estimators_and_imports_take_spaces_commas_and_repeats():
    for argv in (
        ["--estimators", "grpo,ktae", "counterfactual:inverted"],
        ["--estimators", "grpo", "ktae", "counterfactual:inverted"],
        ["--estimators", "grpo", "--estimators", "ktae,counterfactual:inverted"],
    ):
        assert [m.label for m in check_args(_parse(argv))] == ["grpo", "ktae", "counterfactual:inverted"], argv
    methods = check_args(_parse(["--estimators", "grpo+lr,grpo+lr:group", "--train-prompts", "96"]))
    assert [m.length_reward for m in methods] == ["first_seen", "group"]
    assert [m.label for m in check_args(_parse([]))] == list(DEFAULT_METHODS)
    assert _parse(["--import", "json,math", "--import", "os"]).imports == ["json,math", "os"]
    check_args(_parse(["--import", "json,math", "--import", "os"]))


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--estimators", "no_such_estimator"], "--estimators no_such_estimator: unknown verl_credit estimator"),
        (["--estimators", "grpo+zz"], "--estimators grpo+zz: unknown method option 'zz'; known: qp, rb, lr,"),
        (["--estimators", "grpo+qp:x"], "--estimators grpo+qp:x: unknown method option 'qp:x'"),
        (
            ["--estimators", "grpo+lr:best"],
            "--estimators grpo+lr:best: credit.length_reward.anchor must be one of first_seen, group, got 'best'",
        ),
        (["--estimators", "grpo+lr+lr:group"], "--estimators grpo+lr+lr:group: option '+lr' given twice"),
        (["--train-prompts", "4"], "--train-prompts must be an integer >= the prompts per step (8), got 4"),
        (["--estimators", "ktae:random"], "--estimators ktae:random: a ':mode' suffix is only for counterfactual"),
        (["--estimators", "counterfactual:best"], "--estimators counterfactual:best: credit.counterfactual.mode"),
        (["--estimators", ","], "--estimators names no method"),
        (["--import", "no_such_module_for_gym"], "--import no_such_module_for_gym: no module named"),
    ],
)
def test_user_errors_are_one_line(argv, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["gym", "--quick", "--out", str(tmp_path / "gym"), *argv])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PROG + expected), lines
    assert not (tmp_path / "gym").exists(), "nothing may run before the arguments are checked"
