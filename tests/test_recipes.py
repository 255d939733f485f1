"""Every recipe composes into a valid, resolved config without launching anything.

Fast path: each ``recipes/*/run_*.sh`` variant runs through bash with ``PYTHON`` set to a stub that
records the hydra overrides; they are then composed in this process and checked by the dry run's
own checks (``verl_credit.main_ppo.check_config``: the plugin's ``validate_run_config`` and verl's
``validate_config``). End to end: one script through bash with ``DRY_RUN=1`` and the real
``python -m verl_credit.main_ppo``; and a contradictory setting that the checks must reject.

A recipe whose ``credit.<section>`` or estimator is not in this version is skipped with the reason.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import verl_credit.main_ppo as credit_main
from verl_credit.config import CreditConfig
from verl_credit.registry import list_estimators

pytestmark = pytest.mark.filterwarnings("ignore:Disabled critic:UserWarning")

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SCRIPTS = sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.glob("*/run_*.sh"))

VARIANTS = [
    ("baselines/run_baseline.sh", {}),
    ("baselines/run_baseline.sh", {"ALGO": "dapo"}),
    ("baselines/run_baseline.sh", {"DATASET": "gsm8k", "SIZE": "1gpu"}),
    ("baselines/run_baseline.sh", {"ALGO": "dapo", "DATASET": "gsm8k", "NORM_BY_STD": "false"}),
    ("baselines/run_baseline.sh", {"ALGO": "dapo", "ENTROPY_QUANTILE": "0.2"}),  # the "entropy" variant (80/20)
    ("ktae/run_ktae.sh", {}),
    ("ktae/run_ktae.sh", {"ALGO": "dapo", "SIZE": "1gpu"}),
    ("counterfactual/run_counterfactual.sh", {}),
    ("counterfactual/run_counterfactual.sh", {"CF_MODE": "uniform", "SIZE": "1gpu"}),
    ("counterfactual/run_counterfactual.sh", {"CF_MODE": "random"}),
    ("counterfactual/run_counterfactual.sh", {"CF_MODE": "inverted", "ALGO": "grpo"}),
    ("counterfactual/run_counterfactual.sh", {"ENTROPY_QUANTILE": "0.2"}),  # weights, then the entropy filter
    ("variance_weighted/run_variance_weighted.sh", {}),
    ("variance_weighted/run_variance_weighted.sh", {"VW_WEIGHTING": "top_fraction", "DATASET": "math"}),
    ("batching/run_batching.sh", {}),
    ("batching/run_batching.sh", {"REWARD_BALANCED": "false", "ALGO": "dapo"}),
    ("batching/run_batching.sh", {"QUERY_PRESERVED": "false", "ESTIMATOR": "ktae", "SIZE": "1gpu"}),
    ("combined/run_combined.sh", {}),
    ("combined/run_combined.sh", {"ESTIMATOR": "variance_weighted", "LENGTH_REWARD": "true", "DATASET": "gsm8k"}),
]

STUB = """#!/usr/bin/env bash
printf '%s\\0' "$@" > "$RECIPE_ARGS_FILE"
printf '%s' "$VERL_CREDIT_DRY_RUN" > "$RECIPE_ARGS_FILE.dry"
"""


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "VERL_CREDIT_DRY_RUN")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["HOME"] = env.get("HOME", "/tmp")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """{variant id: (overrides, exported dry-run flag)} from running every variant's bash script with the stub."""
    tmp = tmp_path_factory.mktemp("recipes")
    stub = tmp / "python_stub.sh"
    stub.write_text(STUB)
    stub.chmod(0o755)
    out = {}
    for k, (script, extra) in enumerate(VARIANTS):
        args_file = tmp / f"args{k}"
        env = _env({**extra, "PYTHON": str(stub), "RECIPE_ARGS_FILE": str(args_file), "DRY_RUN": "1"})
        proc = subprocess.run(["bash", str(RECIPES / script)], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{script} {extra}: {proc.stderr[-2000:]}"
        argv = args_file.read_text().split("\0")[:-1]
        out[k] = (argv, (tmp / f"args{k}.dry").read_text())
    return out


def _skip_reason(overrides: list[str]) -> str | None:
    """Why this version cannot compose the recipe: a credit section or an estimator it does not have."""
    sections = {f.name for f in dataclasses.fields(CreditConfig)}
    for item in overrides:
        key, _, value = item.lstrip("+").partition("=")
        if key.startswith("credit.") and key.split(".")[1] not in sections:
            return f"config key {key} is not in this version's CreditConfig yet"
        if key == "algorithm.adv_estimator" and value not in ("grpo", "gae") and value not in list_estimators():
            return f"estimator {value!r} is not registered in this version yet"
    return None


def test_every_script_is_covered():
    assert SCRIPTS, "no recipes found"
    assert sorted({script for script, _ in VARIANTS}) == SCRIPTS


@pytest.mark.parametrize(
    "k", range(len(VARIANTS)), ids=[f"{s.split('/')[0]}-{'-'.join(e.values()) or 'default'}" for s, e in VARIANTS]
)
def test_recipe_composes_and_validates(recorded, k):
    argv, dry = recorded[k]
    script, extra = VARIANTS[k]
    assert argv[:2] == ["-m", "verl_credit.main_ppo"], f"{script} must launch verl_credit.main_ppo, got {argv[:2]}"
    assert dry == "1", "DRY_RUN=1 must reach verl_credit.main_ppo as VERL_CREDIT_DRY_RUN=1"
    overrides = argv[2:]
    reason = _skip_reason(overrides)
    if reason:
        pytest.skip(f"{script}: {reason}")
    with initialize_config_module(config_module="verl_credit.conf", version_base=None):
        config = compose(config_name="credit_trainer", overrides=overrides)
    credit = credit_main.check_config(config)
    resolved = OmegaConf.to_container(config, resolve=True)  # every interpolation resolves
    assert resolved["trainer"]["v1"]["trainer_mode"] == "credit"
    assert resolved["reward"]["custom_reward_function"]["path"] == "pkg://verl_credit.rewards"
    estimator = resolved["algorithm"]["adv_estimator"]
    if script.startswith("ktae"):
        assert estimator == "ktae" and credit.ktae.alpha == 1.0 and credit.ktae.use_tf
    if script.startswith("counterfactual"):
        assert estimator == "counterfactual" and credit.counterfactual.mode == extra.get("CF_MODE", "counterfactual")
    if script.startswith("batching"):
        assert credit.batching.query_preserved == (extra.get("QUERY_PRESERVED", "true") == "true")
        assert credit.batching.reward_balanced.enabled == (extra.get("REWARD_BALANCED", "true") == "true")
    if script.startswith("combined"):
        assert credit.token_weighting == "counterfactual" and credit.batching.reward_balanced.enabled
    assert credit.token_filter.entropy_quantile == (
        float(extra["ENTROPY_QUANTILE"]) if "ENTROPY_QUANTILE" in extra else None
    )
    if "ENTROPY_QUANTILE" in extra:
        assert credit.token_filter.denominator == "all"
        assert resolved["trainer"]["experiment_name"].endswith(f"-entropy{extra['ENTROPY_QUANTILE']}")
    algo = extra.get("ALGO", "dapo" if script.startswith("counterfactual") else "grpo")
    actor = resolved["actor_rollout_ref"]["actor"]
    assert actor["clip_ratio_high"] == (0.28 if algo == "dapo" else 0.2)
    balanced = credit.batching.reward_balanced.enabled
    assert resolved["algorithm"]["filter_groups"]["enable"] == (algo == "dapo" and not balanced)
    assert resolved["reward"]["reward_manager"]["name"] == ("dapo" if algo == "dapo" else "naive")


def test_presets_follow_the_papers(recorded):
    """The KTAE paper's setup on MATH at 8gpu; the counterfactual paper's model on GSM8K."""
    by_script = {}
    for k, (script, extra) in enumerate(VARIANTS):
        if not extra:
            by_script[script] = dict(a.lstrip("+").split("=", 1) for a in recorded[k][0][2:])
    ktae = by_script["ktae/run_ktae.sh"]
    assert ktae["actor_rollout_ref.model.path"] == "Qwen/Qwen2.5-Math-7B"
    assert ktae["data.train_batch_size"] == "1024" and ktae["actor_rollout_ref.rollout.n"] == "16"
    assert ktae["actor_rollout_ref.actor.ppo_mini_batch_size"] == "128"
    assert ktae["actor_rollout_ref.actor.optim.lr"] == "1e-6" and ktae["data.max_response_length"] == "3072"
    assert ktae["actor_rollout_ref.actor.use_kl_loss"] == "false" and ktae["trainer.n_gpus_per_node"] == "8"
    cf = by_script["counterfactual/run_counterfactual.sh"]
    assert cf["actor_rollout_ref.model.path"] == "Qwen/Qwen3-1.7B" and cf["data.train_files"].endswith(
        "gsm8k/train.parquet"
    )


def _run_dry(script: str, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = _env({"DRY_RUN": "1", **env_extra})
    return subprocess.run(["bash", str(RECIPES / script), *args], env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_end_to_end_through_bash():
    proc = _run_dry("ktae/run_ktae.sh", "trainer.total_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing launched" in proc.stderr
    assert "adv_estimator: ktae" in proc.stdout and "total_epochs: 1" in proc.stdout
    assert "${" not in proc.stdout, "the printed config must be fully resolved"


def test_dry_run_checks_reject_a_contradictory_config(recorded):
    overrides = recorded[[s for s, _ in VARIANTS].index("ktae/run_ktae.sh")][0][2:]
    with initialize_config_module(config_module="verl_credit.conf", version_base=None):
        config = compose(config_name="credit_trainer", overrides=[*overrides, "actor_rollout_ref.rollout.n=1"])
    with pytest.raises(ValueError, match=r"actor_rollout_ref.rollout.n must be >= 2"):
        credit_main.check_config(config)
