"""``verl-credit explain`` checks every argument before a model is loaded: a user error is one line
``verl-credit explain: error: ...`` on stderr, exit status 2, no traceback; ``--import`` brings in a
user's estimator and report view; ``--estimators`` takes the same list syntax as the gym."""

import json
import subprocess
import sys
import textwrap

import pytest

import verl_credit.explain.run as explain_run
from verl_credit.cli import main

PROG = "verl-credit explain: error: "


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load a model fails the test: the checks must come first."""

    def refuse(path):
        raise AssertionError(f"a model was loaded ({path}) before the arguments were checked")

    monkeypatch.setattr(explain_run, "load_model", refuse)


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    rows = [{"question": "What is 2 + 2?", "answer": "#### 4"}, {"question": "What is 3 + 3?", "answer": "#### 6"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _error(capsys, argv) -> str:
    """Run ``verl-credit explain argv``; exit status 2 and exactly one stderr line, returned."""
    try:
        status = main(["explain", *argv])
    except SystemExit as stop:  # argparse-level errors exit from the parser
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PROG), err
    return lines[0]


def test_malformed_jsonl_line_names_the_file_and_line(capsys, no_model_load, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is 2 + 2?", "answer": "#### 4"}\n\n{"question": "What is 3 + 3?", "answer": \n')
    line = _error(capsys, ["--problems", str(bad), "--out", str(tmp_path / "o")])
    assert line == f"{PROG}--problems {bad}, line 3: not valid JSON (Expecting value at column 42)"
    listed = tmp_path / "list.jsonl"
    listed.write_text('{"question": "q", "answer": "#### 1"}\n[1, 2]\n')
    assert _error(capsys, ["--problems", str(listed)]).endswith(f"{listed}, line 2: expected a JSON object, got list")
    no_question = tmp_path / "noq.jsonl"
    no_question.write_text('{"answer": "#### 1"}\n')
    assert f"{no_question}, line 1: no question" in _error(capsys, ["--problems", str(no_question)])


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.jsonl", "--problems {p}: no such file"),
        (lambda d: d, "--problems {p}: is a folder; expected a .jsonl or verl .parquet file"),
        (
            lambda d: (d / "empty.jsonl", (d / "empty.jsonl").write_text("\n\n"))[0],
            "--problems {p}: the file holds no problems",
        ),
        (
            lambda d: (d / "p.csv", (d / "p.csv").write_text("q,a\n"))[0],
            "--problems {p}: expected a .jsonl or .parquet file",
        ),
    ],
)
def test_problems_file_is_checked(capsys, no_model_load, tmp_path, make, expected):
    path = make(tmp_path)
    assert _error(capsys, ["--problems", str(path)]) == PROG + expected.format(p=path)


def test_first_problem_past_the_end(capsys, no_model_load, problems_file):
    line = _error(capsys, ["--problems", str(problems_file), "--first-problem", "2"])
    assert line == f"{PROG}--first-problem 2: {problems_file} has 2 problems (first index 0, last 1)"
    assert "first_problem must be an integer >= 0" in _error(capsys, ["--first-problem", "-1"])


@pytest.mark.parametrize(
    "option, expected",
    [
        (
            ["--set", "ktae.alpah=2"],
            "--set: unknown config key credit.ktae.alpah; did you mean credit.ktae.alpha? "
            "Valid keys under credit.ktae:",
        ),
        (["--set", "credit.counterfactual.conserve_gradient=maybe"], "--set: credit.counterfactual.conserve_gradient"),
        (["--set", "ktae.top"], "--set expects KEY=VALUE, got 'ktae.top'"),
        (["--set", "ktae.top=[1"], "--set 'ktae.top=[1': the value is not valid YAML"),
        (["--estimators", "nope"], "--estimators: unknown estimator 'nope'; available: grpo, ktae"),
        (["--estimators", "ktea"], "did you mean 'ktae'?"),
        (["--estimators", ","], "--estimators names no estimator"),
        (["--import", "no_such_module_for_explain"], "--import no_such_module_for_explain: no module named"),
        (["--group-size", "1"], "group_size must be >= 2"),
        (["--compare-rollout", "8"], "--compare-rollout 8: the run has 8 rollouts (indices 0 to 7)"),
        (["--compare-rollout", "-1"], "compare_rollout must be an integer >= 0, got -1"),
        (["--set", "counterfactual.answer_markers=so"], "--set: credit.counterfactual.answer_markers must be a list"),
    ],
)
def test_options_are_checked_before_the_model(capsys, no_model_load, problems_file, option, expected):
    assert expected in _error(capsys, ["--problems", str(problems_file), *option])


def test_argparse_errors_keep_the_prog(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["explain", "--num-problems", "0"])
    assert stop.value.code == 2
    assert (
        "verl-credit explain: error: argument --num-problems: must be an integer >= 1, got 0" in capsys.readouterr().err
    )


def test_missing_model_path_is_named_not_a_hub_error(capsys, no_model_load, problems_file, tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    assert _error(capsys, ["--problems", str(problems_file), "--model", str(missing)]) == (
        f"{PROG}--model {missing}: no such folder"
    )
    assert _error(capsys, ["--problems", str(problems_file), "--model", "./my-model"]) == (
        f"{PROG}--model ./my-model: no such folder"
    )
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert "the folder has no config.json" in _error(capsys, ["--problems", str(problems_file), "--model", str(empty)])
    assert "is a file" in _error(capsys, ["--problems", str(problems_file), "--model", str(problems_file)])
    assert "not a Hugging Face model id" in _error(capsys, ["--problems", str(problems_file), "--model", "a b/c"])


def test_relative_path_typo_and_hub_failure(capsys, no_model_load, problems_file, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert _error(capsys, ["--problems", str(problems_file), "--model", "models/qwen"]) == (
        f"{PROG}--model models/qwen: no such folder (in models)"
    )
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def hub_down(path):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {path}.\nCheck your connection.")

    monkeypatch.setattr(explain_run, "load_model", hub_down)  # no network in tests: the Hub "fails"
    assert main(["explain", "--problems", str(problems_file), "--model", "someorg/somemodel"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "[explain] loading someorg/somemodel ..." and len(lines) == 2  # the load was tried
    assert lines[1] == (
        f"{PROG}--model someorg/somemodel: no such local folder, and loading it from the Hugging Face Hub failed: "
        "We couldn't connect to 'https://huggingface.co' to load someorg/somemodel."
    )


def test_hub_id_not_in_the_cache_when_offline(capsys, no_model_load, problems_file, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    line = _error(capsys, ["--problems", str(problems_file), "--model", "someorg/somemodel"])
    assert (
        line
        == f"{PROG}--model someorg/somemodel: no such folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)"
    )


def test_a_user_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "verl_credit.cli", "explain", "--problems", str(bad), "--model", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    message = "not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    assert proc.stderr.strip().splitlines() == [f"{PROG}--problems {bad}, line 1: {message}"]


def test_estimators_list_syntax_is_the_gyms():
    import argparse

    from verl_credit.explain.options import add_arguments, config_from_args

    parser = argparse.ArgumentParser(prog="verl-credit explain")
    add_arguments(parser)
    for argv in (
        ["--estimators", "grpo,ktae", "counterfactual"],
        ["--estimators", "grpo", "ktae", "counterfactual"],
        ["--estimators", "grpo", "--estimators", "ktae,counterfactual"],
    ):
        config = config_from_args(parser.parse_args(argv))
        assert config.estimators == ["grpo", "ktae", "counterfactual"], argv
    config = config_from_args(parser.parse_args(["--import", "json,math", "--import", "os"]))
    assert config.imports == ["json", "math", "os"] and config.estimators is None


@pytest.fixture
def isolated_registries(monkeypatch):
    """What a test's imported module registers is gone afterwards (other tests list the defaults)."""
    import verl_credit.explain.sections as sections
    import verl_credit.registry as registry

    registry.list_estimators()  # the built-ins are in the copy
    monkeypatch.setattr(sections, "_EXPLAINERS", dict(sections._EXPLAINERS))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("explain_user_"):
            del sys.modules[name]


def test_import_brings_a_user_estimator_and_view(
    tmp_path, monkeypatch, tiny_model_dir, problems_file, capsys, isolated_registries
):
    pytest.importorskip("matplotlib")
    package = tmp_path / "pkgs"
    package.mkdir()
    (package / "explain_user_mod.py").write_text(
        textwrap.dedent(
            '''
            import verl_credit
            from verl_credit.core.groups import group_outcome_advantage
            from verl_credit.explain.sections import Section, TokenView, explainer


            @verl_credit.register_estimator("explain_user_est")
            def user_est(batch, ctx):
                """Twice the GRPO advantage, plus 0.25."""
                z = group_outcome_advantage(batch.scores, batch.groups, ctx.norm_adv_by_std, ctx.config.epsilon)
                return verl_credit.CreditOutput(advantages=(2 * z[:, None] + 0.25) * batch.response_mask)


            @verl_credit.register_estimator("explain_user_needs_logprobs", fields=("old_log_probs",))
            def needs_logprobs(batch, ctx):
                return verl_credit.CreditOutput(advantages=batch.old_log_probs)


            @explainer("explain_user_view")
            def user_view(ws):
                batch = ws.batch()
                return Section("explain_user_view", "user view", "-", "lengths", [
                    TokenView("ones", batch.response_mask.float(), "x")
                ], data={"lengths": batch.response_mask.sum(-1).tolist()})
            '''
        )
    )
    monkeypatch.syspath_prepend(str(package))
    out = tmp_path / "out"
    argv = ["explain", "--model", str(tiny_model_dir), "--problems", str(problems_file), "--num-problems", "1"]
    argv += ["--group-size", "2", "--max-new-tokens", "6", "--threads", "1", "--out", str(out)]
    argv += ["--import", "explain_user_mod", "--estimators", "grpo,explain_user_est", "explain_user_view"]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    report = json.loads((out / "explain.json").read_text())
    keys = [s["key"] for s in report["sections"]]
    assert keys == ["grpo", "explain_user_est", "explain_user_view"]
    grpo, mine, view = report["sections"]
    z = grpo["data"]["outcome_advantage"]
    assert len(mine["data"]["advantages"]) == 2
    for i, row in enumerate(mine["data"]["advantages"]):
        assert row and row == pytest.approx([2 * z[i] + 0.25] * len(row))
    assert len(view["data"]["lengths"]) == 2
    # an estimator that needs what the generic view cannot give is named, not silently skipped
    line = _error(capsys, ["--problems", str(problems_file), "--estimators", "explain_user_needs_logprobs"])
    assert "--estimators: estimator 'explain_user_needs_logprobs' needs old_log_probs" in line
