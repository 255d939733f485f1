"""The credit: block: defaults, validation, and composition of verl_credit.main_ppo's hydra config."""

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

import verl_credit.main_ppo  # noqa: F401  (registers the credit schema with hydra)
from verl_credit import CreditConfig
from verl_credit.integration.trainer import validate_run_config


@pytest.fixture(scope="module")
def composer():
    with initialize_config_module("verl_credit.conf", version_base=None):
        yield lambda *overrides: compose("credit_trainer", overrides=list(overrides))


def test_defaults_are_declared_once():
    cfg = CreditConfig()
    assert cfg.correct_threshold == 0.0 and cfg.ktae.alpha == 1.0 and cfg.ktae.tf_eps == 1e-5
    assert cfg.ktae.ignore_token_ids is None and cfg.estimator_kwargs == {}


@pytest.mark.parametrize(
    "values, key",
    [
        ({"ktae": {"alpah": 1}}, "credit.ktae.alpah"),
        ({"correct_treshold": 0}, "credit.correct_treshold"),
        ({"epsilon": 0}, "credit.epsilon"),
        ({"ktae": {"tf_b": 3}}, "credit.ktae.tf_b"),
        ({"import_modules": ["not a module"]}, "credit.import_modules"),
        ({"variance": {"frac": True}}, "credit.variance.frac"),  # a bool is not a number
        ({"ktae": {"alpha": True}}, "credit.ktae.alpha"),
        ({"counterfactual": {"max_spans": True}}, "credit.counterfactual.max_spans"),
    ],
)
def test_from_dict_names_bad_keys(values, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        CreditConfig.from_dict(values)


def test_composed_config_selects_plugin_trainer(composer):
    cfg = composer("algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=8", "credit.ktae.top=0.5")
    assert cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == "credit"
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size  # verl's own defaults are all there
    credit = validate_run_config(cfg)
    assert credit.ktae.top == 0.5 and credit.ktae.alpha == 1.0


@pytest.mark.parametrize("override", ["credit.ktae.alpah=1", "credit.ktae.alpha=abc", "credit.unknown=1"])
def test_unknown_keys_and_wrong_types_fail_at_composition(composer, override):
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0].replace(".", r"\.")):
        composer(override)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=1"], "rollout.n must be >= 2"),
        (
            ["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=4", "trainer.v1.trainer_mode=sync"],
            "trainer_mode=credit",
        ),
        (["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=4", "trainer.use_v1=false"], "use_v1"),
        (["credit.ktae.alpha=-1"], r"credit\.ktae\.alpha"),
        (["credit.import_modules=[no_such_module_xyz]"], "cannot import 'no_such_module_xyz'"),
    ],
)
def test_start_up_checks(composer, overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_run_config(composer(*overrides))


def test_stock_estimator_needs_nothing_from_the_plugin(composer):
    validate_run_config(composer("algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=1"))


def _main_ppo(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "verl_credit.main_ppo", *args], capture_output=True, text=True, timeout=300
    )


def test_main_ppo_module_composes_its_config():
    proc = _main_ppo("algorithm.adv_estimator=ktae", "credit.ktae.top=0.25", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trainer_mode: credit" in proc.stdout and "top: 0.25" in proc.stdout


def test_main_ppo_rejects_a_contradictory_config_before_ray_starts():
    proc = _main_ppo("algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=1")
    assert proc.returncode == 1
    assert "actor_rollout_ref.rollout.n must be >= 2, got 1" in proc.stderr
    assert "ray init kwargs" not in proc.stdout  # verl's run_ppo prints this when it starts Ray


# ----------------------------------------------------------------------------- issue 22: types and unknown keys


@pytest.mark.parametrize(
    "values, message",
    [
        ({"ktae": 5}, r"^credit\.ktae must be a mapping of options \(credit\.ktae\.<option>=<value>\), got int 5; "),
        ({"length_reward": 5}, r"^credit\.length_reward must be a mapping of options .* got int 5; valid options: "),
        ({"ktae": {"alpha": "abc"}}, r"^credit\.ktae\.alpha must be a number, got str 'abc'$"),
        ({"import_modules": 5}, r"^credit\.import_modules must be a list, got int 5$"),
        ({"counterfactual": {"placeholder_token_id": 1.5}}, r"placeholder_token_id must be an integer or null"),
        ({"counterfactual": {"placeholder_token_id": -5}}, r"placeholder_token_id must be null or a token id >= 0"),
        ({"length_reward": {"enabled": "yes"}}, r"^credit\.length_reward\.enabled must be true or false, got str"),
    ],
)
def test_a_block_or_value_of_the_wrong_type_names_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        CreditConfig.from_dict(values)


def test_well_typed_values_pass():
    cfg = CreditConfig.from_dict(
        {"ktae": {"alpha": 2, "ignore_token_ids": [1, 2]}, "estimator_kwargs": {"a": [1]}, "variance": {"frac": 0.5}}
    )
    assert cfg.ktae.alpha == 2 and cfg.ktae.ignore_token_ids == [1, 2]


def test_an_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ValueError, match=r"unknown config key credit\.ktae\.alpah; did you mean credit\.ktae\.alpha\?"):
        CreditConfig.from_dict({"ktae": {"alpah": 2}})
    from verl_credit.config import schema_key_problem
    from verl_credit.main_ppo import check_credit_overrides

    assert schema_key_problem("credit.ktae.alpha") is None and schema_key_problem("credit.estimator_kwargs.x") is None
    assert "did you mean credit.ktae?" in schema_key_problem("credit.ktea.top")
    check_credit_overrides(["credit.ktae.alpha=2", "+credit.estimator_kwargs.k=1", "data.x=1", "--cfg", "job"])
    with pytest.raises(ValueError, match=r"^\+credit\.ktae\.alpah=2: unknown config key credit\.ktae\.alpah; did you"):
        check_credit_overrides(["algorithm.adv_estimator=ktae", "+credit.ktae.alpah=2"])


def test_main_ppo_names_the_closest_key_for_an_unknown_one():
    """Issue 22, case 7: hydra alone suggests appending `+credit.ktae.alpah=2`, which is wrong advice."""
    proc = _main_ppo("algorithm.adv_estimator=ktae", "credit.ktae.alpah=2")
    assert proc.returncode == 1
    assert "credit.ktae.alpah=2: unknown config key credit.ktae.alpah; did you mean credit.ktae.alpha?" in proc.stderr
    assert "To append to your config use" not in proc.stderr


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True])
def test_max_dropped_fraction_is_validated(bad):
    # a string or a bool fails the type check of every credit value, the others the range check
    with pytest.raises(ValueError, match=r"^credit\.max_dropped_fraction must be a number"):
        CreditConfig.from_dict({"max_dropped_fraction": bad})
    assert CreditConfig.from_dict({"max_dropped_fraction": 0.25}).max_dropped_fraction == 0.25
    assert CreditConfig().max_dropped_fraction == 0.0
