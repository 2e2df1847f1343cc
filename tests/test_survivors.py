"""Tests written to kill the mutants the second maths audit (issue 26) left alive: each names the one-line change
it catches, and its expected numbers are worked out by hand in the comments. Pure logic (scripted stand-ins only);
`make mutate` runs these with the other pure tests. The model-level ones (Safe RLHF PPO and the cost model) are
in test_safe_rlhf.py."""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace

import pytest

from cai.evaluate.model import EvalConfig, bootstrap_interval, summarise, win_rate_block
from cai.judge.metrics import metrics


def label(valid, p=None, consistency=None):
    return SimpleNamespace(valid=valid, p_first=p, position_consistency=consistency)


def answers(tokens_trained, tokens_base, kind="harmful"):
    return {"trained": {kind: [{"tokens": t} for t in tokens_trained], "benign": []},
            "base": {kind: [{"tokens": t} for t in tokens_base], "benign": []}}


# --- denominators count valid items only ------------------------------------------------------------------------
def test_the_win_rate_and_its_shares_are_over_valid_comparisons_only():
    """Mutant: the win-rate or the hard-win share divided by every prompt instead of the valid ones."""
    config = EvalConfig(trained="t", bootstrap=200)
    comparisons = [(None, label(True, 0.9, 1.0)), (None, label(False)), (None, label(True, 0.3, 0.5))]
    block = win_rate_block(config, comparisons, answers([10, 10, 12], [8, 9, 12]), "harmful")
    # valid: 0.9 and 0.3 -> mean 0.6 (not 1.2 / 3 = 0.4); one of two above 0.5 -> 0.5 (not 1/3)
    assert block["prompts"] == 3 and block["valid"] == 2
    assert block["win_rate"] == pytest.approx(0.6)
    assert block["hard_win_share"] == pytest.approx(0.5)
    assert block["position_consistency"] == pytest.approx(0.75)  # mean of 1.0 and 0.5; the invalid one has none


def test_refusal_rates_and_the_paired_difference_skip_unread_prompts():
    """Mutant: a refusal rate (or mean) over every benign prompt, counting an unread one as not refusing."""
    config = EvalConfig(trained="t", bootstrap=200)
    comparisons = [(None, label(True, 0.7, 1.0))]
    both = {"trained": {"harmful": [{"tokens": 10}], "benign": [{"tokens": 4}] * 3},
            "base": {"harmful": [{"tokens": 10}], "benign": [{"tokens": 4}] * 3}}
    refusals = {"base": [0.8, None, 0.2], "trained": [0.6, 0.7, None]}
    results = summarise(config, "judge", comparisons, refusals, both, 1, 3, judge_passed=True)
    base, trained, difference = (results["over_refusal"][k] for k in ("base", "trained", "difference"))
    # base read on 2 prompts: 0.8 refuses, 0.2 does not -> 1/2; trained read on 2: 0.6, 0.7 -> 2/2
    assert (base["valid"], base["refusal_rate"], base["mean_p_refusal"]) == (2, 0.5, pytest.approx(0.5))
    assert (trained["valid"], trained["refusal_rate"], trained["mean_p_refusal"]) == (2, 1.0, pytest.approx(0.65))
    # only prompt 0 was read for both: 0.6 - 0.8
    assert difference["prompts"] == 1 and difference["mean"] == pytest.approx(-0.2)
    assert results["mean_length_tokens"] == {"base": pytest.approx(5.5), "trained": pytest.approx(5.5)}


def test_a_judges_accuracy_and_brier_are_over_its_valid_pairs():
    """Mutant: accuracy or Brier divided by every pair, an invalid one counted as wrong."""
    m = metrics([None, 0.7, 0.2, None], [None, 1.0, 0.0, None])
    assert m.valid == 2 and m.invalid_rate == pytest.approx(0.5)
    assert m.accuracy == pytest.approx(0.5)  # 0.7 right, 0.2 wrong (not 1 of 4)
    assert m.brier == pytest.approx((0.3 ** 2 + 0.8 ** 2) / 2)
    assert m.mean_p_chosen == pytest.approx(0.45)


# --- the bootstrap's level ----------------------------------------------------------------------------------------
def test_the_bootstrap_interval_is_95_percent_not_90():
    """Mutant: the 5th and 95th percentiles. For the values 0..19 the resampled mean has standard deviation
    sigma / sqrt(n) with sigma = sqrt((20^2 - 1) / 12) = 5.766, so 1.289; a 95% interval is about 2 x 1.96 x 1.289 =
    5.05 wide, a 90% one 2 x 1.645 x 1.289 = 4.24."""
    low, high = bootstrap_interval([float(v) for v in range(20)], 8000, seed=3)
    assert 4.75 < high - low < 5.35
    assert low < 9.5 < high


# --- redaction --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["password", "passwd", "pwd", "api_key", "token", "client_secret", "sig"])
def test_every_secret_looking_query_parameter_is_masked(name):
    from cai.runs.redact import redact_url

    assert redact_url(f"http://h:8000/v1?{name}=HUNTER2&model=x") == f"http://h:8000/v1?{name}=***&model=x"


def test_results_json_carries_no_credential_of_a_model_url(tmp_path, monkeypatch):
    """Mutant: results.json written without redaction (a model given as a URL with credentials)."""
    from cai.evaluate import model as model_eval
    from tests.test_model_eval_logic import ScriptedJudge, ScriptedModel

    trained = "http://user:SECRET1@host:8000/v1?api_key=SECRET2"
    engines = {"base-model": ScriptedModel("base-model"), trained: ScriptedModel("trained-model"),
               "judge-model": ScriptedJudge(favoured="answer from trained-model", p=0.9)}
    monkeypatch.setattr(model_eval, "_engine", lambda config, shared: (engines[config.model], False))
    config = EvalConfig(trained=trained, base="base-model", harmful_limit=2, benign_limit=1,
                        judge={"model": "judge-model"}, principles_per_pair=1, bootstrap=100, check_judge=False,
                        judge_format="pairwise")
    results = asyncio.run(model_eval.evaluate_models(config, tmp_path))
    assert results["trained"] == trained  # what the caller gets is the config as given ...
    written = (tmp_path / "results.json").read_text()
    assert "SECRET" not in written and json.loads(written)["trained"] == "http://***@host:8000/v1?api_key=***"


def test_the_recipe_copy_in_a_run_folder_carries_no_credential(tmp_path):
    """Mutant: recipe.yaml written without redaction."""
    from cai.pipeline import Pipeline, Recipe

    recipe = Recipe(name="r", output_dir=str(tmp_path), stages=["report"],
                    generate={"engine": {"backend": "openai", "model": "m",
                                         "base_urls": ["http://user:SECRET@h:8000/v1"]}})
    from cai.errors import UsageError

    pipeline = Pipeline(recipe)
    with pytest.raises(UsageError, match="no cai stage output"):  # the report has nothing to show; the copy is made
        asyncio.run(pipeline.execute(progress=False))
    text = (pipeline.run / "recipe.yaml").read_text()
    assert "SECRET" not in text and "http://***@h:8000/v1" in text


# --- the report's plots and lines ------------------------------------------------------------------------------
def online_rows(path):
    rows = [{"round": 1, "vs_start": {"win_rate": 0.61, "ci95": [0.51, 0.71]},
             "vs_previous": {"win_rate": 0.53, "ci95": [0.43, 0.63]}, "label_confidence": 0.72, "kl_to_start": 0.04}]
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_online_section_names_each_win_rate_by_what_it_compares(tmp_path):
    """Mutant: the "vs previous" figure printed from the "vs start" numbers."""
    from cai.report.training import online_section

    online_rows(tmp_path / "run" / "online-dpo" / "metrics.jsonl")
    (tmp_path / "report").mkdir()
    body, images = online_section(tmp_path / "run", tmp_path / "report")
    assert "against the start 0.61 (95% CI 0.51 to 0.71)" in body
    assert "against the round before 0.53" in body and len(images) == 1


def test_the_cost_plot_draws_the_limit_where_it_is(tmp_path, monkeypatch):
    """Mutant: the limit line drawn at another height. Step 1 logs cost 0.9 with violation 0.4 -> limit 0.5."""
    from cai.report import training

    figures = []
    monkeypatch.setattr(training, "_save", lambda fig, folder, name: figures.append(fig) or name)
    rows = [{"step": 1, "objective/cost": 0.9, "objective/lambda": 0.1, "objective/cost_violation": 0.4},
            {"step": 2, "objective/cost": 0.7, "objective/lambda": 0.3, "objective/cost_violation": 0.2}]
    assert training.cost_plot(rows, tmp_path) == "ppo_cost_lambda.png"
    left, right = figures[0].axes
    cost_line, limit_line = left.lines
    assert list(cost_line.get_ydata()) == [0.9, 0.7]
    assert [float(y) for y in limit_line.get_ydata()] == [pytest.approx(0.5)] * 2
    assert list(right.lines[0].get_ydata()) == [0.1, 0.3]


def test_a_bad_refusal_never_reads_good_when_the_interval_is_wide():
    """Already test_26_3's subject; here the edge: an interval ending exactly at the tolerance reads good, one just
    above reads unclear (mutant: < instead of <=)."""
    from cai.evaluate.diagnostics import REFUSAL_TOLERANCE, _refusal_line
    from cai.evaluate.results import OverRefusal

    def line(high):
        return _refusal_line(OverRefusal.model_validate(
            {"base": {"mean_p_refusal": 0.1}, "trained": {"mean_p_refusal": 0.12},
             "difference": {"mean": 0.02, "ci95": [-0.01, high]}}), noisy=False)["mark"]

    assert line(REFUSAL_TOLERANCE) == "good" and line(REFUSAL_TOLERANCE + 1e-6) == "unclear"
    assert not math.isnan(REFUSAL_TOLERANCE)


def test_urls_the_parser_refuses_blank_secrets_and_userinfo_without_a_host_stay_masked():
    """`make mutate` survivors in cai/runs/redact.py (2026-12-01): the unparseable-URL fallback (split kept to the
    first "://", so a second URL inside cannot leak through rsplit), blank query values kept, no host."""
    from cai.runs.redact import redact_url

    assert redact_url("http://user:pw@[::1:8000/v1") == "http://***"  # an unclosed IPv6 bracket: urlsplit refuses it
    assert redact_url("http://user:pw@[::1/?next=http://x") == "http://***"
    assert redact_url("http://h/v1?token=&x=1") == "http://h/v1?token=***&x=1"  # a blank secret still named, masked
    assert redact_url("http://user:pw@/v1") == "http://***@/v1"


def test_ece_by_hand_with_shared_bins_and_a_certain_answer():
    """`make mutate` survivors in cai/judge/metrics.py: the bin index and the per-bin means (bins of 0.05 over
    confidence 0.5-1; p_correct below 0.5 is a wrong answer at confidence 1 - p)."""
    from cai.judge.metrics import expected_calibration_error

    # bin 6: 0.82 right; bin 7: 0.88 right, 0.88 wrong; bin 8: 0.93 wrong; bin 9: 0.97, 0.99, 1.0 right
    ece = (abs(0.82 - 1) * 1 + abs(0.88 - 0.5) * 2 + abs(0.93 - 0) * 1 + abs((0.97 + 0.99 + 1.0) / 3 - 1) * 3) / 7
    assert expected_calibration_error([0.82, 0.88, 0.12, 0.07, 0.97, 0.99, 1.0]) == pytest.approx(ece)
    assert ece == pytest.approx(1.91 / 7)  # 0.18 + 2 x 0.38 + 0.93 + 3 x 0.0133
