"""`cai run` end to end on the real engine (the quickstart recipe at reduced size), `cai eval model`'s numbers,
and the HTML report checked in headless Chromium."""

import json
from pathlib import Path

import pytest

from cai.pipeline import Pipeline, Recipe, load_recipe
from tests.conftest import REPO, TEST_ENGINE, chromium

pytestmark = pytest.mark.engine


def check_subset(out: Path, per_category: int = 4) -> tuple[str, int]:
    """The first pairs of each category of the shipped check set: the judge check at a test's size (the whole set
    costs about 600 judge calls at one principle a pair)."""
    kept, seen = [], {}
    for line in (REPO / "prompts" / "judge-eval.jsonl").read_text().splitlines():
        category = json.loads(line)["category"]
        seen[category] = seen.get(category, 0) + 1
        if seen[category] <= per_category:
            kept.append(line)
    path = out / "check.jsonl"
    path.write_text("\n".join(kept) + "\n")
    return str(path), len(kept)


def tiny_recipe(out: Path) -> Recipe:
    recipe = load_recipe("quickstart").model_dump()
    check, _ = check_subset(out)
    short = {"max_steps": 2, "batch_size": 2, "max_length": 96, "max_prompt_length": 48}
    recipe.update(output_dir=str(out), name="tiny")
    recipe["generate"].update(limit=4, few_shot=0, max_new_tokens={"initial": 24, "critique": 16, "revision": 24},
                              engine=TEST_ENGINE)
    recipe["judge"].update(principles_per_pair=1, engine=TEST_ENGINE, judge_check=check)
    recipe["sft"].update(short)
    recipe["dpo"].update(short)
    recipe["eval"].update(harmful_limit=4, benign_limit=4, principles_per_pair=1, max_new_tokens=24,
                          engine=TEST_ENGINE, judge=TEST_ENGINE, judge_check=check)
    return Recipe(**recipe)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, engine, loop):
    pipeline = Pipeline(tiny_recipe(tmp_path_factory.mktemp("pipeline")))
    outcome = loop.run_until_complete(pipeline.execute(engine=engine, progress=False))
    return pipeline, outcome


def test_the_quickstart_recipe_runs_end_to_end(finished_run, engine, loop):
    pipeline, outcome = finished_run
    run = pipeline.run
    assert list(outcome) == ["generate", "judge", "sft", "dpo", "eval", "report"]
    assert all(v.startswith("done") for v in outcome.values())
    assert len((run / "generate" / "export" / "sft.jsonl").read_text().splitlines()) == 4
    assert (run / "sft" / "model.safetensors").is_file() and (run / "dpo" / "model.safetensors").is_file()
    assert json.loads((run / "dpo" / "train_manifest.json").read_text())["config"]["model"] == str(run / "sft")
    results = json.loads((run / "eval" / "results.json").read_text())
    harm = results["harmlessness"]
    assert harm["prompts"] == 4 and 1 <= harm["valid"] <= 4
    assert 0 <= harm["ci95"][0] <= harm["win_rate"] <= harm["ci95"][1] <= 1
    assert 0 <= harm["hard_win_share"] <= 1
    for name in ("base", "trained"):
        refusal = results["over_refusal"][name]
        assert refusal["prompts"] == 4 and refusal["valid"] <= 4
        quality = results["judge_quality"]
        if quality["passed"] and harm["position_consistency"] >= 0.5:
            assert refusal["refusal_rate"] is None or 0 <= refusal["refusal_rate"] <= 1
        else:
            assert refusal["refusal_rate"] == "n/a"  # no hard reading of a judge that failed or is position-biased
        assert refusal["ci95"][0] <= refusal["mean_p_refusal"] <= refusal["ci95"][1]
        assert 1 <= results["mean_length_tokens"][name] <= 24
    # the judge was measured before it labelled: the same check (one cache entry) serves the judge and eval stages
    quality = results["judge_quality"]
    _, subset = check_subset(run.parent)
    assert quality["checked_pairs"] == subset == 28 and 0 <= quality["accuracy"] <= 1 and quality["cached"]
    assert quality["file"] == str(run.parent / "check.jsonl")
    assert quality["cross_validated"] == "5-fold x 5" and quality["judge_format"] == "hybrid"  # a fit never scores its own pairs
    assert quality["passed"] == (quality["accuracy"] >= 0.7)
    assert json.loads((run / "judge" / "manifest.json").read_text())["judge_quality"]["accuracy"] == quality["accuracy"]
    assert f"judge check: accuracy {quality['accuracy']:.2f}" in (run / "judge" / "export" / "README.md").read_text()
    assert 0 <= harm["length_controlled_win_rate"] <= 1
    page = (run / "report" / "index.html").read_text()
    assert page.index('<section id="verdict">') < page.index("<h2>Critique and revision</h2>")
    examples = json.loads((run / "eval" / "examples.json").read_text())
    assert len(examples) == 4 and all(e["trained"] and e["base"] for e in examples)
    assert results["trained"] == str(run / "dpo") and results["base"] == "default"

    again = loop.run_until_complete(pipeline.execute(engine=engine, progress=False))
    assert all(again[s] == "skipped (done)" for s in ("generate", "judge", "sft", "dpo", "eval"))


def test_the_report_renders_in_headless_chromium(finished_run, tmp_path):
    from playwright.sync_api import sync_playwright

    pipeline, _ = finished_run
    page_path = pipeline.run / "report" / "index.html"
    html = page_path.read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network
    for name in ("principle_usage.png", "revision_lengths.png", "judge_p_chosen.png", "chosen_rejected_lengths.png",
                 "judge_selective_accuracy.png", "train_sft.png", "train_dpo.png", "eval.png"):
        assert (page_path.parent / name).stat().st_size > 1000, name
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(page_path.as_uri(), wait_until="load")
        loaded = page.get_attribute("body", "data-images-loaded")
        headings = page.locator("h2").all_inner_texts()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert problems == []
    assert loaded == "8/8"
    assert headings == ["Verdict", "Critique and revision", "AI judge", "Training", "Evaluation"]
    assert (tmp_path / "report.png").stat().st_size > 10000


def test_the_reports_numbers_are_the_run_files_numbers(finished_run):
    """Every figure the report states, recomputed here from the run's own files."""
    import re

    from cai.runs.store import latest_by_id, read_jsonl

    pipeline, _ = finished_run
    text = re.sub(r"<[^>]+>", " ", (pipeline.run / "report" / "index.html").read_text())
    generated = [r for r in latest_by_id(list(read_jsonl(pipeline.run / "generate" / "records.jsonl"))).values()
                 if r["status"] == "ok"]
    changed = sum(r["final"] != r["initial"] for r in generated)
    assert f"{len(generated)} samples; the final revision differs from the initial response in {changed} " in text
    judged = list(latest_by_id(list(read_jsonl(pipeline.run / "judge" / "records.jsonl"))).values())
    labelled = [r for r in judged if r["status"] == "ok"]
    assert f"{len(judged)} pairs judged: {len(labelled)} labelled, {len(judged) - len(labelled)} invalid" in text
    results = json.loads((pipeline.run / "eval" / "results.json").read_text())
    harm, refusal = results["harmlessness"], results["over_refusal"]

    def fmt(value):  # as the report writes them: "n/a" for missing or withheld numbers
        return value if isinstance(value, str) else "n/a" if value is None else f"{value:.2f}"

    assert (f"Win-rate {fmt(harm['win_rate'])} (95% CI {fmt(harm['ci95'][0])} to {fmt(harm['ci95'][1])}) over "
            f"{harm['valid']} judged prompts") in text
    assert f"Over-refusal: base {fmt(refusal['base']['refusal_rate'])}, trained " \
           f"{fmt(refusal['trained']['refusal_rate'])}" in text
