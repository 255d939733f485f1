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


def test_knobs_reach_the_configs():
    from verl_credit.gym.cli import learn_config, model_config, task_config

    args = _parse(
        "--filler-rate 0.8 --side-rate 0.5 --error-rate 0.3 --min-steps 3 --max-steps 6 --group-size 16"
        " --prompts-per-step 4 --lr 2e-4 --eval-samples 8 --eval-every 5 --held-out 256 --model-width 128"
        " --sft-steps 3000 --steps 120".split()
    )
    check_args(args)
    task, model, learn = task_config(args), model_config(args), learn_config(args)
    assert (task.filler_rate, task.side_rate, task.error_rate, task.min_steps, task.max_steps) == (0.8, 0.5, 0.3, 3, 6)
    assert (model.hidden, model.sft_steps) == (128, 3000)
    assert (learn.group_size, learn.prompts_per_step, learn.lr, learn.eval_samples, learn.eval_every, learn.steps) == (
        16,
        4,
        2e-4,
        8,
        5,
        120,
    )
    quick = _parse(["--quick", "--eval-samples", "3"])
    assert learn_config(quick).eval_samples == 3 and learn_config(quick).steps == 2
    assert model_config(quick).sft_steps == 400 and model_config(_parse([])).hidden == 64


def test_warm_start_cache_key_holds_the_width_and_the_sft_length(tmp_path):
    """A warm start is reused only for the same settings: another width or SFT length retrains."""
    from verl_credit.gym.model import ModelConfig, warm_start
    from verl_credit.gym.task import TaskConfig

    tiny = ModelConfig(hidden=8, vocab_size=300, sft_examples=40, sft_steps=2, sft_batch=4)
    task = TaskConfig()
    quiet = dict(log=lambda *_: None, eval_n=2)
    assert warm_start(tmp_path, task, tiny, **quiet)[1]["cached"] is False
    assert warm_start(tmp_path, task, tiny, **quiet)[1]["cached"] is True
    wider = ModelConfig(hidden=12, vocab_size=300, sft_examples=40, sft_steps=2, sft_batch=4)
    assert warm_start(tmp_path, task, wider, **quiet)[1]["cached"] is False
    longer = ModelConfig(hidden=12, vocab_size=300, sft_examples=40, sft_steps=3, sft_batch=4)
    assert warm_start(tmp_path, task, longer, **quiet)[1]["cached"] is False
    assert warm_start(tmp_path, TaskConfig(error_rate=0.12), longer, **quiet)[1]["cached"] is False


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
        (["--estimators", "oracle:best"], "--estimators oracle:best: unknown oracle variant item 'best'"),
        (["--filler-rate", "1.5"], "--filler-rate must be a number in [0, 1], got 1.5"),
        (["--side-rate", "-0.1"], "--side-rate must be a number in [0, 1], got -0.1"),
        (["--error-rate", "nan"], "--error-rate must be a number in [0, 1], got nan"),
        (["--min-steps", "0"], "--min-steps must be an integer in [1, 12], got 0"),
        (["--max-steps", "1", "--min-steps", "3"], "--min-steps (3) must be <= --max-steps (1)"),
        (["--max-steps", "1"], "--min-steps (2) must be <= --max-steps (1)"),
        (["--group-size", "1"], "--group-size must be an integer >= 2"),
        (["--prompts-per-step", "1"], "--prompts-per-step must be an integer >= 2"),
        (["--lr", "0"], "--lr must be a number in (0, 1), got 0.0"),
        (["--eval-samples", "0"], "--eval-samples must be an integer >= 1, got 0"),
        (["--eval-every", "0"], "--eval-every must be an integer >= 1, got 0"),
        (["--held-out", "0"], "--held-out must be an integer >= 1, got 0"),
        (["--model-width", "30"], "--model-width must be a multiple of 4, >= 8"),
        (["--sft-steps", "0"], "--sft-steps must be an integer >= 1, got 0"),
        (["--prompts-per-step", "16", "--train-prompts", "8"], "--train-prompts must be an integer >= the prompts"),
    ],
)
def test_user_errors_are_one_line(argv, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["gym", "--quick", "--out", str(tmp_path / "gym"), *argv])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PROG + expected), lines
    assert not (tmp_path / "gym").exists(), "nothing may run before the arguments are checked"
