"""The explain report's reading aids (issue 15, 3): which rollouts the counterfactual stage measured and
why not the others, doubtful "correct" grades flagged, the effective advantage A x w on one colour scale
per rollout with its colour bar, one rollout with every estimator side by side and the rank correlations,
the banner when no group is mixed, empty histograms for views without signal, markers shown as typed,
plot labels that do not collide.

Written solutions on the tiny offline model (``rollouts_from_texts``): each one is built to land in one
case of the span detection.
"""

import json
import re
from html import escape

import pytest
import torch

pytest.importorskip("matplotlib", reason="the demo extra is not installed: pip install -e .[demo]")

from matplotlib.figure import Figure
from scipy.stats import spearmanr

import verl_credit.explain.plots as plots
from verl_credit.data import Problem
from verl_credit.explain import ExplainConfig
from verl_credit.explain.blocks import Layout
from verl_credit.explain.compare import choose_rollout
from verl_credit.explain.coverage import ANSWER_ONLY, MEASURED, NOT_SCORED
from verl_credit.explain.options import DEMO_ANSWER_MARKERS, demo_settings
from verl_credit.explain.run import explain_rollouts, rollouts_from_texts
from verl_credit.scoring import CounterfactualConfig
from verl_credit.spans import find_spans

PROBLEMS = [
    Problem("apples", "Tom has 3 apples and buys 4. How many?", [{"role": "user", "content": "3+4?"}], "7"),
    Problem("half", "What is half of 10?", [{"role": "user", "content": "10/2?"}], "5"),
]
TEXTS = [
    [
        "Tom has 3 + 4 = 7 apples. He counts them again carefully.\nSo, the answer is 7.",  # demo marker
        "Tom has 3 + 4 = 8 apples. That was the plan all along.\n#### 8",
        "The answer is 7 because Tom had three apples and then he went to the shop to buy four more apples "
        "for his family and his friends today.",  # marker followed by more than 16 words
        "I am not sure about this one at all, sorry.",  # no marker
    ],
    [
        "#### 5",  # an answer, no reasoning before it
        "Half of 10 is 10 / 2 = 5 and then we keep going with more",  # cut below: no eos
        "Half of 10 is 10 / 5 = 2. So, the answer is 2.",
        "Ten split in two parts gives five each time. \\boxed{5}",
    ],
]
CUT = 5


def _rollouts(tokenizer):
    ro = rollouts_from_texts(tokenizer, PROBLEMS, TEXTS)
    ro.responses[CUT] = ro.responses[CUT][:-1]  # what sampling returns when max_new_tokens is hit: no eos
    ro.finished[CUT] = False
    return ro


def _explain(tiny, out, **options):
    model, tokenizer = tiny
    config = ExplainConfig(group_size=4, out_dir=str(out), threads=1, **options)
    result = explain_rollouts(_rollouts(tokenizer), model, tokenizer, config, "tiny", "written", log=lambda m: None)
    return result, result.report_path.read_text(encoding="utf-8"), json.loads(result.json_path.read_text())


@pytest.fixture(scope="module")
def report(tiny, tmp_path_factory):
    return _explain(tiny, tmp_path_factory.mktemp("report"))


def _section(result, key):
    return next(s for s in result.sections if s.key == key)


def _block(html: str, i: int) -> str:
    start = html.index(f'id="rollout-{i}"')
    end = html.find('<div class="rollout"', start)
    return html[start : end if end > 0 else len(html)]


def test_demo_markers_are_an_explain_setting_shown_in_the_report(report, tiny, tmp_path):
    result, html, data = report
    assert CounterfactualConfig().answer_markers == ["final answer", "####"], "the library default is unchanged"
    assert result.credit.counterfactual.answer_markers == DEMO_ANSWER_MARKERS
    assert data["demo_settings"] == {"counterfactual.answer_markers": DEMO_ANSWER_MARKERS}
    shown = ", ".join(f'"{m}"' for m in DEMO_ANSWER_MARKERS)
    assert escape(f"counterfactual.answer_markers = [{shown}]") in html and ">demo settings<" in html
    # the user's markers replace the demo's: no demo setting left, and "So, ..." is no longer an answer
    own = {"counterfactual": {"answer_markers": ["final answer", "####"]}}
    assert demo_settings(own) == {}
    plain, plain_html, _ = _explain(tiny, tmp_path, credit=own, estimators=["counterfactual"])
    assert plain.demo_settings == {} and ">demo settings<" not in plain_html
    statuses = [c["status"] for c in _section(plain, "counterfactual").data["coverage"]]
    assert statuses[0] == NOT_SCORED and statuses[6] == NOT_SCORED


def test_coverage_reasons_come_from_the_span_detection(report, tiny):
    result, html, data = report
    _, tokenizer = tiny
    cf = _section(result, "counterfactual")
    cov = cf.data["coverage"]
    found = find_spans(tokenizer, [r.tolist() for r in result.rollouts.responses], result.credit.counterfactual)
    for c, sp, D in zip(cov, found, cf.data["D"], strict=True):  # statuses agree with the detection and the scores
        assert (c["status"] == MEASURED) == (sp.answer is not None and bool(sp.spans)) == any(d is not None for d in D)
    assert [c["status"] for c in cov] == [
        MEASURED, MEASURED, NOT_SCORED, NOT_SCORED, ANSWER_ONLY, NOT_SCORED, MEASURED, MEASURED,
    ]  # fmt: skip
    assert cov[2]["reason"] == "its last answer marker is followed by more than 16 words (answer_max_words)"
    assert cov[3]["reason"] == "no answer marker"
    assert cov[4]["reason"].startswith("no reasoning span before the answer")
    assert cov[CUT]["reason"] == "cut at the token limit (200 new tokens, no eos): no answer marker"
    assert cov[CUT]["truncated"] and not any(c["truncated"] for i, c in enumerate(cov) if i != CUT)
    assert cf.data["measured"] == 4 and "Which rollouts were measured: 4 of 8" in html
    assert "Counterfactual: spans measured in 4 of 8 rollouts; the others, by reason (count): " in html
    assert "no answer marker (1)" in html
    assert "counterfactual: not scored (no answer marker)" in _block(html, 3)


def test_gold_answers_measure_rollouts_without_a_marker(tiny, tmp_path):
    result, _, _ = _explain(
        tiny, tmp_path, estimators=["counterfactual"], credit={"counterfactual": {"answer_source": "gold"}}
    )
    cov = result.sections[0].data["coverage"]
    assert cov[3]["status"] == MEASURED and cov[CUT]["status"] == MEASURED and cov[CUT]["truncated"]


def test_a_correct_grade_of_a_cut_solution_is_flagged(report):
    result, html, data = report
    assert result.rollouts.rewards[CUT] == 1.0, "math-verify took the last number of the cut text"
    flags = [r["grading_flag"] for r in data["rollouts"]]
    assert flags[CUT].startswith("graded correct, but cut at the token limit")
    assert not any(f for i, f in enumerate(flags) if i != CUT), "finished or wrong rollouts are not flagged"
    assert "correct? (cut)" in _block(html, CUT) and 'class="ok">correct<' not in _block(html, CUT)
    assert 'class="ok">correct<' in _block(html, 0)
    assert "half: 3/4 correct (1 of them cut at the token limit)" in html


def test_weighting_views_show_the_effective_advantage_on_one_scale_per_rollout(report):
    result, html, _ = report
    grpo = _section(result, "grpo").views[0].values
    cf = _section(result, "counterfactual")
    for view in cf.views:
        assert view.label == "A x w" and view.center == 0.0
        assert torch.allclose(view.parts["A"], grpo) and torch.allclose(view.values, grpo * view.parts["w"])
    method = cf.views[0]
    wrong = [i for i in range(8) if result.rollouts.rewards[i] == 0 and (method.parts["w"][i] > 1.01).any()]
    assert wrong, "a wrong rollout with an up-weighted span"
    i = wrong[0]
    t = int(method.parts["w"][i].argmax())
    assert method.values[i, t] < grpo[i, t] < 0, "more weight on a wrong rollout: more blame (a more negative A x w)"
    layout = Layout(result)
    for i, n in enumerate(layout.lengths):
        advantage = [v for _, v in layout.views if v.scale == "advantage"]
        top = max(float(v.values[i, :n].abs().max()) for v in advantage)
        assert layout.scales[i]["advantage"] == pytest.approx((0.0, top))
        block = _block(html, i)
        assert block.count('class="cbar"') == 2  # advantage and significance
        assert f">{top:+.3g}<" in block and f">{-top:+.3g}<" in block  # the bar's ends
        assert block.count("0.800)") >= 1, "the largest |value| of the rollout is full colour"
    assert 'title="A x w=' in html and "(A=" in html and ", w=" in html  # the tooltip gives A and w


def test_one_rollout_side_by_side_and_rank_correlations(report, tiny, tmp_path):
    result, html, data = report
    comp = data["comparison"]
    assert comp["estimators"] == ["grpo", "ktae", "counterfactual", "variance_weighted", "length_reward"]
    assert comp["rollout"] == 0 and "is in a mixed group, has measured counterfactual spans" in comp["why"]
    grid = html[html.index('<div class="cgrid"') :]
    assert grid.startswith('<div class="cgrid" style="--cols:5">') and grid.count('class="ccol"') == 5
    mask = Layout(result).mask.bool()
    views = [s.views[0] for s in result.sections]
    for uid in ["q0", "q1"]:
        rows = torch.tensor([u == uid for u in result.rollouts.uids])
        sel = mask & rows.unsqueeze(1)
        entry = comp["rank_correlation"][uid]
        assert entry["tokens"] == int(sel.sum())
        for a in range(5):
            for b in range(5):
                want = spearmanr(views[a].values[sel].numpy(), views[b].values[sel].numpy()).statistic
                assert entry["rho"][a][b] == pytest.approx(float(want), abs=1e-4)
    assert "scipy.stats.spearmanr" in html
    chosen, _, _ = _explain(tiny, tmp_path, compare_rollout=6, estimators=["grpo", "ktae"])
    doc = json.loads(chosen.json_path.read_text())
    assert doc["comparison"]["rollout"] == 6 and doc["comparison"]["why"] == "chosen with --compare-rollout"
    with pytest.raises(ValueError, match="--compare-rollout 8: the run has 8 rollouts"):
        _explain(tiny, tmp_path, compare_rollout=8)


def test_choose_rollout_priorities():
    uids = ["a", "a", "b", "b"]
    # b is all wrong: only group a is mixed; in it, the measured rollout wins over the correct one
    assert (
        choose_rollout([True, False, False, False], [True, True, True, True], uids, [False, True, True, True])[0] == 1
    )
    i, why = choose_rollout([True, False, False, False], [False, True, True, True], uids, [True, True, True, True])
    assert (
        i == 0 and why == "the first rollout that is in a mixed group, has measured counterfactual spans and is correct"
    )
    assert choose_rollout([False] * 4, [True] * 4, uids, None)[0] == 0


def test_banner_when_no_group_is_mixed(tiny, tmp_path, report):
    model, tokenizer = tiny
    ro = rollouts_from_texts(tokenizer, PROBLEMS, TEXTS, grader=lambda text, truth: False)
    config = ExplainConfig(
        group_size=4, out_dir=str(tmp_path), threads=1, estimators=["grpo", "ktae", "counterfactual"]
    )
    result = explain_rollouts(ro, model, tokenizer, config, log=lambda m: None)
    html = result.report_path.read_text(encoding="utf-8")
    comp = json.loads(result.json_path.read_text())["comparison"]
    assert comp["mixed_groups"] == [] and comp["silent_views"] == ["grpo", "ktae", "counterfactual"]
    assert '<div class="banner"><b>No group is mixed</b>' in html
    assert "grpo, ktae, counterfactual give every token no signal" in html
    assert all(x is None for row in comp["rank_correlation"]["q0"]["rho"] for x in row), "constant views: no rho"
    _, mixed_html, _ = report
    assert 'class="banner"' not in mixed_html


def _patches(ax) -> int:
    return sum(p.get_height() > 0 for p in ax.patches)


def test_a_histogram_without_signal_is_drawn_empty():
    fig = Figure()
    empty, mixed = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    plots._hist(empty, torch.zeros(50), 0.0, "grpo: A")
    assert _patches(empty) == 0 and any("no signal" in t.get_text() for t in empty.texts)
    plots._hist(mixed, torch.tensor([0.0] * 10 + [0.5] * 3 + [-0.5] * 2), 0.0, "x")
    colours = {tuple(round(c, 3) for c in p.get_facecolor()[:3]) for p in mixed.patches if p.get_height() > 0}
    assert len(colours) == 3, "above (green), below (red) and at the centre (grey) in their own colours"


def test_markers_are_shown_as_typed(report):
    _, html, _ = report
    assert "&quot;\\boxed{&quot;" in html and "\\\\boxed" not in html


def test_plot_labels_do_not_collide(tiny, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_png", lambda fig: drawn.append(fig) or b"")
    _explain(tiny, tmp_path)  # every section's plots and the summary plots
    assert len(drawn) >= 6
    for fig in drawn:
        assert plots.label_overlaps(fig) == [], [ax.get_title() for ax in fig.axes]
    # the check can fail: two tick labels on top of each other
    fig = Figure(figsize=(2, 1))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xticks([0, 0.01], ["counterfactual", "uniform"])
    assert plots.label_overlaps(fig) == [("counterfactual", "uniform")]


def test_report_numbers_in_the_rollout_header(report):
    _, html, _ = report
    head = re.search(r'<div class="rhead">rollout q1\.4 .*?</div>', html).group(0)
    assert "counterfactual: answer only (no reasoning span before the answer" in head
