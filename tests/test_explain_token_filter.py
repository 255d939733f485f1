"""The high-entropy token filter in ``verl-credit explain``: the entropy is the run's own forward at the
sampling temperature, the mask is the core filter's over every valid token, the dropped tokens are
greyed in the advantage views (and only there), the summary and explain.json give the kept fraction
and, per estimator, the share of its credit the filter keeps."""

import json
import re

import pytest
import torch

pytest.importorskip("matplotlib", reason="the demo extra is not installed: pip install -e .[demo]")

from verl_credit.core.token_filter import high_entropy_mask_loop
from verl_credit.data import Problem
from verl_credit.explain import ExplainConfig
from verl_credit.explain.run import explain_rollouts, rollouts_from_texts
from verl_credit.explain.token_filter import PAPER_QUANTILE, response_entropy

PROBLEMS = [
    Problem("apples", "Tom has 3 apples and buys 4. How many?", [{"role": "user", "content": "3+4?"}], "7"),
    Problem("half", "What is half of 10?", [{"role": "user", "content": "10/2?"}], "5"),
]
TEXTS = [
    ["Tom has 3 + 4 = 7 apples.\n#### 7", "Tom has 3 + 4 = 8 apples.\n#### 8", "It is 7.\n#### 7"],
    ["Half of 10 is 10 / 2 = 5.\n#### 5", "Half of 10 is 10 / 5 = 2.\n#### 2", "#### 6"],
]


def _explain(tiny, tmp_path, credit=None, temperature=0.7):
    model, tok = tiny
    ro = rollouts_from_texts(tok, PROBLEMS, TEXTS)
    config = ExplainConfig(
        out_dir=str(tmp_path), threads=1, estimators=["grpo", "ktae"], credit=credit or {}, temperature=temperature
    )
    result = explain_rollouts(ro, model, tok, config, log=lambda m: None)
    return result, result.report_path.read_text(encoding="utf-8"), json.loads(result.json_path.read_text())


def _plain_entropy(model, prompt, response, temperature):
    """H of every response position by the textbook formula, one position at a time."""
    out = []
    ids = torch.cat([prompt, response])
    with torch.no_grad():
        logits = model(input_ids=ids.unsqueeze(0)).logits[0].double() / temperature
    for t in range(response.numel()):
        p = torch.softmax(logits[prompt.numel() - 1 + t], -1)
        out.append(float(-(p * torch.log(p)).sum()))
    return out


def test_the_filter_is_shown_with_the_papers_quantile_by_default(tiny, tmp_path):
    model, _ = tiny
    result, html, data = _explain(tiny, tmp_path)
    tf, ro = result.token_filter, result.rollouts
    assert tf.quantile == PAPER_QUANTILE and not tf.configured
    # the entropy is the model's own at the sampling temperature
    for i in (0, 4):
        expected = _plain_entropy(model, ro.prompts[i], ro.responses[i], 0.7)
        torch.testing.assert_close(
            tf.entropy[i, : len(expected)].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-4
        )
    _, mask = ro.padded(result.tokenizer.pad_token_id)
    keep, tau = high_entropy_mask_loop(tf.entropy, mask, PAPER_QUANTILE)
    assert torch.equal(tf.keep, keep) and tf.tau == pytest.approx(float(tau))
    n_valid = int(mask.sum())
    assert tf.metrics["kept_fraction"] == pytest.approx(int(keep.sum()) / n_valid)
    assert abs(tf.metrics["kept_fraction"] - PAPER_QUANTILE) <= 1 / n_valid + 1e-9
    # greyed: each dropped token once per advantage view of its rollout, and once per main view in the
    # side-by-side block of the compared rollout; never in the other views or the rollout's text
    drop = mask.bool() & ~keep
    views = [v for s in result.sections for v in s.views]
    n_adv = sum(v.scale == "advantage" for v in views)
    n_main = sum(s.views[0].scale == "advantage" for s in result.sections if s.views)
    c = data["comparison"]["rollout"]
    greyed = len(re.findall(r'<span class="(?:sp )?drop"', html))
    assert greyed == n_adv * int(drop.sum()) + n_main * int(drop[c].sum()) > 0, (greyed, n_adv, n_main)
    assert "dropped by the token filter" in html
    # the summary: kept fraction and the per-estimator rows, also in explain.json
    assert f"keeps {tf.metrics['kept_fraction']:.1%} of the valid tokens" in html
    assert "Kept by the filter, per estimator: grpo" in html and "ktae" in html
    rows = {r["estimator"]: r for r in data["token_filter"]["per_estimator"]}
    assert set(rows) == {"grpo", "ktae"}
    for key, row in rows.items():
        section = next(s for s in result.sections if s.key == key)
        adv = section.views[0].values.float()
        mass = float(adv.abs()[keep].sum() / adv.abs()[mask.bool()].sum())
        assert row["advantage_mass_kept"] == pytest.approx(mass)
    assert data["token_filter"]["kept"][0] == [bool(k) for k in keep[0, : int(mask[0].sum())]]


def test_the_configured_quantile_and_temperature_are_used(tiny, tmp_path):
    model, _ = tiny
    result, html, _ = _explain(tiny, tmp_path, credit={"token_filter": {"entropy_quantile": 0.5}}, temperature=1.3)
    tf, ro = result.token_filter, result.rollouts
    assert tf.quantile == 0.5 and tf.configured and tf.temperature == 1.3
    expected = _plain_entropy(model, ro.prompts[1], ro.responses[1], 1.3)
    torch.testing.assert_close(
        tf.entropy[1, : len(expected)].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-4
    )
    assert "credit.token_filter.entropy_quantile=0.5" in html


def test_response_entropy_of_an_empty_response_is_zero(tiny):
    model, _ = tiny
    h = response_entropy(
        model, [torch.tensor([5, 6, 7])] * 2, [torch.tensor([8, 9]), torch.tensor([], dtype=torch.long)], 1.0, 3
    )
    assert h.shape == (2, 3) and bool((h[0, :2] > 0).all()) and bool((h[0, 2:] == 0).all()) and bool((h[1] == 0).all())
