"""Start-up of a run with verl_credit installed (verl_credit.integration.startup, verl_hook).

Both entry points compose and pass their checks for every estimator; verl's own entry point keeps its
stock trainer unless the config asks for a plugin feature; a run that cannot work fails in the driver
before Ray (the check verl's ``main`` calls before ``ray.init``, and one real subprocess); the dry run
catches an unknown estimator, plugins disabled for verl's workers, and data the run cannot use.
"""

import json
import os
import subprocess
import sys

import pytest
import verl  # noqa: F401  (loads the plugin: verl's validate_config is wrapped)
import verl.utils.config as verl_config
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import verl_credit.main_ppo  # noqa: F401  (registers the credit schema)
from verl_credit import registry
from verl_credit.data import verl_record, write_parquet
from verl_credit.diagnose import plugins_policy_problem
from verl_credit.integration import startup
from verl_credit.registry import list_estimators

pytestmark = pytest.mark.filterwarnings("ignore:Disabled critic:UserWarning")

VALID = ["actor_rollout_ref.actor.use_dynamic_bsz=true", "actor_rollout_ref.rollout.n=4"]


def _rows(truth="4", n=3):
    return [verl_record("What is 2+2?", truth, data_source="test", split="train", index=i) for i in range(n)]


@pytest.fixture(scope="module")
def good_data(tmp_path_factory):
    return str(write_parquet(_rows(), tmp_path_factory.mktemp("data") / "train.parquet"))


def verl_cfg(*overrides):
    """verl's own ppo_trainer config, as `python -m verl.trainer.main_ppo` composes it."""
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=[*VALID, *overrides])


def credit_cfg(*overrides):
    """verl_credit's credit_trainer config, as `python -m verl_credit.main_ppo` composes it."""
    with initialize_config_module(config_module="verl_credit.conf", version_base=None):
        return compose(config_name="credit_trainer", overrides=[*VALID, *overrides])


def verl_start(config):
    """What verl's main does in the driver before ray.init: validate_config (wrapped by the plugin)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    verl_config.validate_config(
        config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )


# ----------------------------------------------------------------------------- trainer choice


def test_the_plugin_wraps_verls_validate_config():
    assert verl_config.validate_config.verl_credit_original is not None
    from verl.utils.config import validate_config  # what verl's main_ppo binds at its import

    assert validate_config is verl_config.validate_config


@pytest.mark.parametrize("estimator", sorted({*list_estimators(), "grpo"}))
def test_both_entry_points_pass_their_start_up_checks_for_every_estimator(estimator, good_data):
    data = [f"data.train_files={good_data}", f"data.val_files={good_data}"]
    ours = credit_cfg(f"algorithm.adv_estimator={estimator}", *data)
    startup.check_config(ours)
    assert ours.trainer.v1.trainer_mode == "credit"

    theirs = verl_cfg(f"algorithm.adv_estimator={estimator}", *data)
    startup.check_config(theirs)
    plugin = estimator in list_estimators()
    assert theirs.trainer.v1.trainer_mode == ("credit" if plugin else "sync")


def test_verl_entry_point_leaves_a_plain_verl_run_untouched(good_data):
    config = verl_cfg("algorithm.adv_estimator=grpo", f"data.train_files={good_data}")
    before = OmegaConf.to_container(config)
    assert not startup.plugin_requested(config)
    verl_start(config)
    assert OmegaConf.to_container(config) == before
    assert config.trainer.v1.trainer_mode == "sync" and not startup.was_checked(config)


@pytest.mark.parametrize(
    "overrides, feature",
    [
        (["algorithm.adv_estimator=ktae", "+credit.ktae.top=0.5"], "algorithm.adv_estimator=ktae"),
        (["algorithm.adv_estimator=grpo", "+credit.token_weighting=counterfactual"], "credit.token_weighting"),
        (["algorithm.adv_estimator=grpo", "+credit.length_reward.enabled=true"], "credit.length_reward.enabled"),
        (["algorithm.adv_estimator=grpo", "+credit.diagnostics.token_flip_every=2"], "token_flip_every=2"),
    ],
)
def test_verl_entry_point_chooses_the_plugin_trainer_for_a_plugin_feature(overrides, feature, capsys):
    config = verl_cfg(*overrides)
    verl_start(config)
    assert config.trainer.v1.trainer_mode == "credit" and startup.was_checked(config)
    assert feature in capsys.readouterr().err


def test_credit_options_without_a_feature_keep_verls_trainer(capsys):
    config = verl_cfg("algorithm.adv_estimator=grpo", "+credit.ktae.top=0.5")
    verl_start(config)
    assert config.trainer.v1.trainer_mode == "sync"
    assert "no verl_credit feature is on" in capsys.readouterr().err


def test_a_typo_in_a_credit_option_on_verls_config_is_named():
    with pytest.raises(ValueError, match=r"unknown config key credit\.ktae\.alpah"):
        verl_start(verl_cfg("algorithm.adv_estimator=ktae", "+credit.ktae.alpah=2"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.use_v1=false"], r"trainer\.use_v1=false selects the legacy one .* set trainer\.use_v1=true"),
        (["actor_rollout_ref.rollout.n=1"], r"actor_rollout_ref\.rollout\.n must be >= 2, got 1"),
        (["actor_rollout_ref.actor.policy_loss.loss_mode=gspo"], r"loss_mode=gspo is sequence-level"),
        (["trainer.v1.trainer_mode=colocate_async"], r"trainer_mode=colocate_async cannot run it: set .*=sync"),
    ],
)
def test_a_run_that_cannot_work_fails_in_verls_driver_check(overrides, message):
    with pytest.raises(ValueError, match=message):
        verl_start(verl_cfg("algorithm.adv_estimator=ktae", *overrides))


def _verl_main(tmp_path, *overrides, **env):
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *VALID, *overrides, f"hydra.run.dir={tmp_path}"]
    environ = {k: v for k, v in os.environ.items() if k != startup.DRY_RUN_ENV}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**environ, **env})


def test_verl_main_with_an_unknown_estimator_fails_before_ray(tmp_path):
    proc = _verl_main(tmp_path, "algorithm.adv_estimator=ktea")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "algorithm.adv_estimator='ktea' is not a registered advantage estimator. Did you mean 'ktae'?" in proc.stderr
    assert "ray init kwargs" not in proc.stdout  # verl's run_ppo prints this right before ray.init


def test_verl_main_dry_run_selects_the_plugin_trainer_and_launches_nothing(tmp_path, good_data):
    proc = _verl_main(
        tmp_path,
        "algorithm.adv_estimator=ktae",
        "+credit.ktae.top=0.5",
        f"data.train_files={good_data}",
        **{startup.DRY_RUN_ENV: "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing launched" in proc.stderr and "ray init kwargs" not in proc.stdout
    assert "trainer_mode: credit" in proc.stdout and "top: 0.5" in proc.stdout


# ----------------------------------------------------------------------------- estimator names


def test_an_unknown_estimator_names_the_registered_ones_and_the_closest():
    with pytest.raises(ValueError) as err:
        startup.check_config(credit_cfg("algorithm.adv_estimator=ktea"))
    message = str(err.value)
    assert "algorithm.adv_estimator='ktea' is not a registered advantage estimator. Did you mean 'ktae'?" in message
    assert "verl's: gae, " in message and "rloo" in message
    # user estimators other tests registered in this process may be listed too
    ours = message.split("verl_credit's: ")[1].split(".")[0].split(", ")
    assert {"counterfactual", "ktae", "variance_weighted"} <= set(ours), ours


def test_an_unregistered_user_estimator_fails_and_a_registered_one_passes(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"'my_scaled' is not a registered .* credit\.import_modules"):
        startup.check_config(credit_cfg("algorithm.adv_estimator=my_scaled"))
    (tmp_path / "my_user_estimators.py").write_text(
        "import verl_credit\n"
        "@verl_credit.register_estimator('my_scaled')\n"
        "def my_scaled(batch, ctx):\n"
        "    raise NotImplementedError\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.delitem(sys.modules, "my_user_estimators", raising=False)
    config = verl_cfg("algorithm.adv_estimator=my_scaled", "+credit.import_modules=[my_user_estimators]")
    startup.check_config(config)
    assert config.trainer.v1.trainer_mode == "credit"
    sys.modules.pop("my_user_estimators", None)


# ----------------------------------------------------------------------------- plugin loading


@pytest.mark.parametrize(
    "policy, expected",
    [
        (None, None),
        ("auto", None),
        ("verl_credit,other", None),
        ("none", "loads no plugin"),
        ("other", "other,verl_credit"),
    ],
)
def test_plugins_policy_problem(policy, expected):
    problem = plugins_policy_problem(policy)
    assert problem is None if expected is None else expected in problem


def test_plugins_disabled_for_workers_fail_a_plugin_run(monkeypatch):
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", "none")
    with pytest.raises(RuntimeError, match=r"VERL_USE_EXTERNAL_PLUGINS=none: verl loads no plugin"):
        startup.check_config(credit_cfg("algorithm.adv_estimator=ktae"))
    # a plain verl run does not need the plugin in its workers
    startup.check_config(verl_cfg("algorithm.adv_estimator=grpo"))


def test_plugins_disabled_in_the_ray_runtime_env_are_seen():
    config = verl_cfg(
        "algorithm.adv_estimator=ktae", "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_PLUGINS=other"
    )
    with pytest.raises(RuntimeError, match=r"VERL_USE_EXTERNAL_PLUGINS=other does not list verl_credit"):
        startup.check_config(config)


# ----------------------------------------------------------------------------- data


def _check_data(tmp_path, rows, *overrides, name="train.parquet"):
    path = tmp_path / name
    if name.endswith(".parquet"):
        write_parquet(rows, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    startup.check_config(verl_cfg(f"data.train_files={path}", *overrides))
    return path


def test_a_list_ground_truth_is_named_when_it_is_teacher_forced(tmp_path):
    rows = _rows(truth="4")
    rows = [{**r, "reward_model": {"style": "rule", "ground_truth": ["4", "5"]}} for r in rows]
    with pytest.raises(ValueError) as err:
        _check_data(tmp_path, rows, "algorithm.adv_estimator=variance_weighted")
    assert str(err.value) == (
        f"data.train_files {tmp_path / 'train.parquet'} row 0: field 'reward_model.ground_truth' is a list "
        "(['4', '5']), expected one answer as a string or a number; algorithm.adv_estimator=variance_weighted "
        "teacher-forces it as credit.variance.answer_template='#### {answer}', which gives \"#### ['4', '5']\""
    )


def test_a_list_ground_truth_graded_by_our_reward_is_named_with_its_row(tmp_path):
    rows = _rows()
    rows[2]["reward_model"] = {"style": "rule", "ground_truth": ["4", "5"]}
    reward = [
        "reward.custom_reward_function.path=pkg://verl_credit.rewards",
        "reward.custom_reward_function.name=compute_score",
    ]
    with pytest.raises(ValueError, match=r"train\.jsonl row 2: field 'reward_model\.ground_truth' is a list"):
        _check_data(tmp_path, rows, "algorithm.adv_estimator=ktae", *reward, name="train.jsonl")
    # verl's own reward functions may take structured answers: not refused without a consumer of the text
    _check_data(tmp_path, rows, "algorithm.adv_estimator=ktae", name="train.jsonl")


def test_a_missing_reward_model_column_is_named(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "reward_model"} for r in _rows()]
    with pytest.raises(ValueError) as err:
        _check_data(tmp_path, rows, "algorithm.adv_estimator=ktae")
    assert str(err.value) == (
        f"data.train_files {tmp_path / 'train.parquet'} row 0: no field 'reward_model' (the row has: ability, "
        "data_source, extra_info, prompt); verl's rule-based reward manager (naive) reads it for every rollout: "
        "write reward_model={'style': 'rule', 'ground_truth': <the answer>} in every row"
    )
    _check_data(tmp_path, rows, "algorithm.adv_estimator=ktae", "reward.reward_model.enable=true")  # a model scores


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"reward_model": {"style": "rule", "ground_truth": "  "}},
            r"row 1: field 'reward_model\.ground_truth' is empty",
        ),
        ({"reward_model": {"style": "rule"}}, r"row 1: field 'reward_model\.ground_truth' is missing"),
        ({"prompt": []}, r"row 1: field 'prompt' is empty"),
    ],
)
def test_empty_or_missing_fields_are_named_with_file_and_row(tmp_path, change, message):
    rows = _rows()
    rows[1] = {**rows[1], **change}
    with pytest.raises(ValueError, match=message):
        _check_data(tmp_path, rows, "algorithm.adv_estimator=ktae", name="train.jsonl")


def test_the_prompt_column_follows_data_prompt_key(tmp_path):
    with pytest.raises(ValueError, match=r"row 0: no field 'question' \(data\.prompt_key=question\)"):
        _check_data(tmp_path, _rows(), "algorithm.adv_estimator=grpo", "data.prompt_key=question")


def test_a_malformed_jsonl_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps(_rows()[0]) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=rf"data\.val_files {path} line 3: not valid JSON"):
        startup.check_config(verl_cfg("algorithm.adv_estimator=grpo", f"data.val_files={path}"))


def test_missing_data_files_are_a_note_in_the_dry_run(tmp_path, capsys):
    startup.dry_run(verl_cfg("algorithm.adv_estimator=ktae", f"data.train_files={tmp_path / 'absent.parquet'}"))
    err = capsys.readouterr().err
    assert f"data.train_files {tmp_path / 'absent.parquet'} does not exist yet" in err and "nothing launched" in err
