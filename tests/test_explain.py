"""``verl-credit explain`` on the tiny offline model: the report is written, parses as HTML, is
self-contained, escapes everything, holds every rollout and the numbers the core functions compute.

The tiny model is random, so its samples are garbage; a stand-in grader makes the groups mixed
where a test needs KTAE signal, and ``rollouts_from_texts`` feeds written solutions (with answers
and calculations) where the counterfactual spans and math-verify grading are under test.
"""

import json
import re
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from itertools import count

import pytest
import torch

pytest.importorskip("matplotlib", reason="the demo extra is not installed: pip install -e .[demo]")

from verl_credit.core.counterfactual import span_importance
from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.ktae import KTAEParams, ktae_advantages
from verl_credit.core.variance import r3_rewards
from verl_credit.data import Problem
from verl_credit.explain import ExplainConfig
from verl_credit.explain.options import DEMO_ANSWER_MARKERS, parse_set_options
from verl_credit.explain.report import format_number, safe_text
from verl_credit.explain.run import explain_rollouts, rollouts_from_texts, run_explain
from verl_credit.scoring import CounterfactualConfig, hf_scorer, reference_answer, score_reference, score_spans

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictHTML(HTMLParser):
    """Balanced tags, and every resource inline: no script, no external src/href."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "script":
            self.errors.append("script tag")
        for name, value in attrs:
            if name in ("src", "href") and value and not (value.startswith("#") or value.startswith("data:image/png")):
                self.errors.append(f"external {name}={value[:60]}")
            if name.startswith("on"):
                self.errors.append(f"event handler {name}")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> StrictHTML:
    parser = StrictHTML()
    parser.feed(html)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    return parser


NASTY = '<script>alert("x")</script> & <img src=http://evil/x.png onerror=1>'


@pytest.fixture(scope="module")
def sampled(tiny, tmp_path_factory):
    """run_explain end to end on the tiny model: 2 problems x 4 samples, every other sample graded correct."""
    model, tokenizer = tiny
    tmp = tmp_path_factory.mktemp("explain")
    problems = tmp / "problems.jsonl"
    rows = [
        {"question": f"Tom has 3 apples. {NASTY} How many?", "answer": "3 apples\n#### 3"},
        {"problem": "What is $2+2$?", "solution": "$\\boxed{4}$"},
    ]
    problems.write_text("\n".join(json.dumps(r) for r in rows))
    flips = count()
    config = ExplainConfig(
        problems=str(problems), num_problems=2, group_size=4, max_new_tokens=24, out_dir=str(tmp / "out"), threads=1
    )
    result = run_explain(config, model, tokenizer, grader=lambda text, truth: next(flips) % 2 == 0, log=lambda m: None)
    return result, result.report_path.read_bytes().decode("utf-8"), json.loads(result.json_path.read_text())


def test_report_is_written_valid_self_contained_html(sampled):
    result, html, _ = sampled
    assert result.report_path.name == "report.html" and html.startswith("<!DOCTYPE html>")
    parser = _parse(html)
    assert parser.tags.count("img") >= 3, "summary and section plots are embedded"
    assert "data:image/png;base64," in html
    assert [s.key for s in result.sections] == ["grpo", "ktae", "counterfactual", "variance_weighted", "length_reward"]


def test_untrusted_text_is_escaped(sampled):
    result, html, _ = sampled
    assert NASTY not in html and "<script" not in html and "onerror=1>" not in html
    assert escape(result.rollouts.problems[0].question) in html
    for text in result.rollouts.texts:  # model output: shown escaped, control characters as symbols
        assert safe_text(text) in html
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", html), "no raw control characters"


def test_report_holds_every_rollout(sampled):
    result, html, data = sampled
    assert len(result.rollouts) == 8 and len(data["rollouts"]) == 8
    for i in range(8):
        assert f'id="rollout-{i}"' in html
    assert [r["reward"] for r in data["rollouts"]] == [1.0, 0.0] * 4


def test_ktae_numbers_match_the_core_function(sampled):
    """A = z + K from verl_credit.core.ktae directly equals what the report shows for every token."""
    result, html, data = sampled
    ro, tok = result.rollouts, result.tokenizer
    ids, mask = ro.padded(tok.pad_token_id)
    rewards = ro.rewards.double()
    res = ktae_advantages(
        ids,
        mask,
        rewards,
        group_index_from_uids(ro.uids),
        KTAEParams(ignore_token_ids=[tok.pad_token_id, tok.eos_token_id]),
    )
    ktae = next(s for s in data["sections"] if s["key"] == "ktae")
    assert ktae["metrics"]["ktae/mixed_groups/fraction"] == 1.0
    for i in range(len(ro)):
        expected = res.advantages[i][mask[i].bool()].double()
        got = torch.tensor(ktae["data"]["advantages"][i], dtype=torch.float64)
        assert torch.allclose(got, expected, atol=1e-5)
        t = int(expected.abs().argmax())
        assert f'title="A={float(expected[t]):+.4f}"' in html
    assert any(v != 0 for row in ktae["data"]["key_token_values"] for v in row), "mixed groups give non-zero K"


WRITTEN = [
    [
        "Tom has 3 + 4 = 7 apples. He counts them again carefully.\n#### 7",
        "First add 3 + 4 = 8. That was the plan all along.\n#### 8",
        "The store sells apples for money. Tom has 7 apples in total.\nThe final answer is 7",
        "I am not sure about this one at all, sorry.",
    ],
    [
        "Half of 10 is 10 / 2 = 5. So the answer is \\boxed{5}.",
        "Half of 10 is 10 / 5 = 2. So the answer is \\boxed{2}.",
        "Ten split in two parts gives five each time. \\boxed{5}",
        "Compute 10 * 2 = 20 then stop here. \\boxed{20}",
    ],
]


@pytest.fixture(scope="module")
def written(tiny, tmp_path_factory):
    """Written solutions (answers, calculations, sentences), graded by math-verify, through explain_rollouts."""
    model, tokenizer = tiny
    problems = [
        Problem("apples", "Tom has 3 apples and buys 4. How many?", [{"role": "user", "content": "3+4?"}], "7"),
        Problem("half", "What is half of 10?", [{"role": "user", "content": "10/2?"}], "5"),
    ]
    rollouts = rollouts_from_texts(tokenizer, problems, WRITTEN)
    config = ExplainConfig(group_size=4, out_dir=str(tmp_path_factory.mktemp("written")), threads=1)
    result = explain_rollouts(rollouts, model, tokenizer, config, "tiny", "written", log=lambda m: None)
    return result, result.report_path.read_bytes().decode("utf-8"), json.loads(result.json_path.read_text())


def test_written_solutions_are_graded_by_math_verify(written):
    result, _, _ = written
    assert result.rollouts.rewards.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_counterfactual_spans_match_score_spans(written, tiny):
    """The span table holds D = S(without span) - S(original) exactly as scoring.score_spans computes it."""
    model, tokenizer = tiny
    result, html, data = written
    ro = result.rollouts
    demo = CounterfactualConfig(answer_markers=DEMO_ANSWER_MARKERS)  # explain's demo setting
    res = score_spans(tokenizer, hf_scorer(model, tokenizer.pad_token_id), ro.prompts, ro.responses, demo)
    D, importance = span_importance(res.scores)
    section = next(s for s in data["sections"] if s["key"] == "counterfactual")
    got = torch.tensor([[float("nan") if v is None else v for v in row] for row in section["data"]["D"]])
    assert torch.allclose(got, D, atol=1e-4, equal_nan=True)
    assert int(res.scored.sum()) == 7, "every solution with '####', 'final answer' or \\boxed{ is scored"
    table = next(t for t in section["tables"] if "D" in t["columns"])["rows"]
    assert len(table) == int((~torch.isnan(D)).sum()) > 0
    kinds = {row[2] for row in table}
    assert kinds == {"arithmetic", "sentence"}
    for row in table:
        assert escape(row[3]) in html and f"<td>{format_number(row[4])}</td>" in html
    weights = section["data"]["weights"]
    assert all(w == 1.0 for row in weights["uniform"] for w in row)
    for mode in ("counterfactual", "random", "inverted"):
        assert any(w != 1.0 for row in weights[mode] for w in row)


def test_variance_reference_tokens_match_the_core_function(written, tiny):
    model, tokenizer = tiny
    result, html, data = written
    ro = result.rollouts
    refs = [
        torch.tensor(tokenizer(f"#### {ro.problems[k].ground_truth}", add_special_tokens=False)["input_ids"])
        for k in ro.problem_of
    ]
    marks = [reference_answer(tokenizer, "#### {answer}", ro.problems[k].ground_truth)[1] for k in ro.problem_of]
    lp, mask, _ = score_reference(
        tokenizer, hf_scorer(model, tokenizer.pad_token_id), ro.prompts, ro.responses, refs, range(8),
        CounterfactualConfig(answer_markers=DEMO_ANSWER_MARKERS), answer_masks=marks,
    )  # fmt: skip  # the reasoning ends where explain's (demo) answer markers say
    groups = group_index_from_uids(ro.uids)
    res = r3_rewards(lp, mask, ro.rewards, groups, result.credit.variance)
    section = next(s for s in data["sections"] if s["key"] == "variance_weighted")
    assert torch.allclose(torch.tensor(section["data"]["r3"]), res.r3, atol=1e-5)
    for g, uid in enumerate(groups.uids):
        ref = section["data"]["reference"][uid]
        J = len(ref["tokens"])
        assert "".join(ref["tokens"]) == f"#### {ro.problems[int(uid[1:])].ground_truth}"
        assert torch.allclose(torch.tensor(ref["sigma"]), res.sigma[g, :J], atol=1e-5)
        first = int((groups.group == g).nonzero()[0])
        assert ref["scored"] == marks[first].tolist() and not ref["scored"][0]  # "####" is context
        assert all(s == 0 for s, scored in zip(ref["sigma"], ref["scored"], strict=True) if not scored)
    assert "reference answer &#x27;#### 7&#x27;" in html


def test_length_reward_section_uses_the_old_log_probs(written):
    result, _, data = written
    section = next(s for s in data["sections"] if s["key"] == "length_reward")
    shaping = section["data"]["shaping"]
    rewards = result.rollouts.rewards.tolist()
    assert all((s >= 0) if r > 0 else (s <= 0) for s, r in zip(shaping, rewards, strict=True))
    assert any(s != 0 for s in shaping)


def test_length_reward_section_with_the_counterfactual_scorer(tiny, tmp_path):
    """scorer=counterfactual in the report: span importances from score_spans, answer tokens 1,
    unmeasured tokens 0, no min-max (the description says so)."""
    from verl_credit.core.counterfactual import token_significance

    model, tokenizer = tiny
    problems = [
        Problem("apples", "Tom has 3 apples and buys 4. How many?", [{"role": "user", "content": "3+4?"}], "7"),
        Problem("half", "What is half of 10?", [{"role": "user", "content": "10/2?"}], "5"),
    ]
    rollouts = rollouts_from_texts(tokenizer, problems, WRITTEN)
    config = ExplainConfig(
        estimators=["length_reward"],
        out_dir=str(tmp_path),
        credit={"length_reward": {"scorer": "counterfactual"}},
    )
    result = explain_rollouts(rollouts, model, tokenizer, config, log=lambda m: None)
    section = result.sections[0]
    assert "already in [0, 1]" in section.description
    ro = result.rollouts
    demo = CounterfactualConfig(answer_markers=DEMO_ANSWER_MARKERS)
    res = score_spans(tokenizer, hf_scorer(model, tokenizer.pad_token_id), ro.prompts, ro.responses, demo)
    mask = ro.credit_batch(tokenizer.pad_token_id).response_mask
    want = token_significance(res.scores, res.spans, mask)
    for got, row, m in zip(section.data["significance"], want, mask, strict=True):
        assert got == pytest.approx(row[m.bool()].tolist(), abs=1e-5)
    scored = [i for i in range(len(ro)) if not torch.isnan(res.scores[i, 0])]
    span_values = [float(want[i, s0:s1].min()) for i in scored for s0, s1 in res.spans[i].tolist() if s0 >= 0]
    assert min(span_values) < 0.5 <= max(span_values)  # measured spans on both sides of the threshold
    unscored = [i for i in range(len(ro)) if torch.isnan(res.scores[i, 0])]
    assert unscored and all(not any(section.data["significance"][i]) for i in unscored)  # all 0: insignificant
    # answer_source=gold: the reference answer is teacher-forced, so the rollout without an answer is measured
    credit = {"length_reward": {"scorer": "counterfactual"}, "counterfactual": {"answer_source": "gold"}}
    config = ExplainConfig(estimators=["length_reward"], out_dir=str(tmp_path / "gold"), credit=credit)
    gold = explain_rollouts(rollouts, model, tokenizer, config, log=lambda m: None).sections[0]
    assert all(any(v > 0 for v in gold.data["significance"][i]) for i in unscored)


def test_options_and_estimator_selection(tiny, tmp_path):
    assert parse_set_options(["ktae.top=0.5", "credit.counterfactual.answer_markers=['####']"]) == {
        "ktae": {"top": 0.5},
        "counterfactual": {"answer_markers": ["####"]},
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set_options(["ktae.top"])
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        ExplainConfig(group_size=1)
    model, tokenizer = tiny
    problems = [Problem("p", "q", [{"role": "user", "content": "q"}], "1")]
    rollouts = rollouts_from_texts(tokenizer, problems, [["#### 1", "#### 2"]])
    with pytest.raises(ValueError, match="unknown estimator 'nope'; available: grpo, ktae"):
        explain_rollouts(rollouts, model, tokenizer, ExplainConfig(estimators=["nope"], out_dir=str(tmp_path)))
    config = ExplainConfig(estimators=["counterfactual"], score_rows="trained", out_dir=str(tmp_path))
    flat = rollouts_from_texts(tokenizer, problems * 2, [["#### 1", "#### 2"], ["#### 2", "#### 2"]])
    section = explain_rollouts(flat, model, tokenizer, config, log=lambda m: None).sections[0]
    assert section.data["rows_asked"] == [0, 1], "the all-wrong group is not scored, as in the trainer"
    config = ExplainConfig(estimators=["ktae"], out_dir=str(tmp_path), credit={"ktae": {"top": 0.5}})
    result = explain_rollouts(rollouts, model, tokenizer, config, log=lambda m: None)
    assert [s.key for s in result.sections] == ["ktae"] and result.credit.ktae.top == 0.5
    assert (
        max(
            abs(v)
            for row in json.loads(result.json_path.read_text())["sections"][0]["data"]["key_token_values"]
            for v in row
        )
        <= 0.5
    )


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(sampled, tmp_path):
    """Chromium lays the page out (every rollout and side-by-side column is in its DOM) and paints a
    non-blank screenshot."""
    result, _, _ = sampled
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,1400"]
    url = result.report_path.resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'id="rollout-\d+"', dom.stdout)) == len(result.rollouts)
    assert dom.stdout.count('class="ccol"') == len(result.sections), "one side-by-side column per estimator"
    shot = tmp_path / "report.png"
    subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1100, 1400)
    lo, hi = image.getextrema()
    assert hi - lo > 100, "the page is not blank"
