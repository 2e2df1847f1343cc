"""Every file the project ships loads: each recipe passes `cai run RECIPE --dry-run` (every stage's settings and
every path and model it names, nothing loaded), each constitution validates, each benchmark imports and answers
`--help`. A shipped file the project's own readers refuse is a bug the user meets first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.processes import run as run_command

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_every_shipped_recipe_passes_a_dry_run(recipe, tmp_path):
    done = run_command([sys.executable, "-m", "cai", "run", str(REPO / "recipes" / recipe), "--dry-run"],
                       timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    from cai.pipeline import load_recipe

    stages = load_recipe(REPO / "recipes" / recipe).stages
    plan = done.stdout.splitlines()
    assert [line.split()[0] for line in plan[1:-1]] == stages  # one plan line per stage, in order
    assert plan[-1] == "settings and paths: valid (nothing was loaded)"
    assert not (tmp_path / "outputs").exists()  # a dry run writes nothing


def test_the_dry_run_names_every_missing_path_before_anything_starts(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages: [generate, judge, sft]\ngenerate:\n  constitution: /no/such.yaml\n"
                      "  prompts: ./missing.jsonl\n  engine: {model: /no/model}\nsft: {model: ./nope}\n")
    done = run_command([sys.executable, "-m", "cai", "run", str(recipe), "--dry-run"], timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    for field in ("generate.constitution", "generate.prompts", "generate.engine.model", "sft.model"):
        assert field in done.stderr, done.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "constitutions").glob("*.yaml")))
def test_every_shipped_constitution_validates(name):
    from cai.constitution import load_constitution

    constitution = load_constitution(REPO / "constitutions" / f"{name}.yaml")
    assert constitution.principles and constitution.preference_principles
    done = run_command([sys.executable, "-m", "cai", "constitution", "validate", name], timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_every_benchmark_imports_and_answers_help(script):
    done = run_command([sys.executable, str(REPO / "benchmarks" / script), "--help"], timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


class EmbeddedOnCpu:
    """Stand-in (pure logic) for the embedded model's vLLM engine on a CPU: only `describe()`, from the settings
    the real engine would run with, so a check's cache key is computed without starting one."""

    def __init__(self, engine):
        self.engine = engine

    def describe(self):
        from cai.engines.vllm_engine import EMBEDDED_NAME, engine_settings

        return {"backend": "vllm", "model": EMBEDDED_NAME, "model_path": "/anywhere",
                **engine_settings(self.engine, on_cpu=True)}


def test_the_shipped_judge_check_matches_the_default_judge_of_the_shipped_recipes(monkeypatch, tmp_path):
    """The check shipped in prompts/judge-checks/ is read only under its cache key: a change to the templates, the
    constitution, the check set or the judge's defaults makes it stale, and a fresh machine would then spend ~11
    minutes measuring again. This fails first: refresh with `scripts/ship_judge_check.py`. (Pure: the key of the
    embedded engine's settings on a CPU, no engine started.)"""
    import json

    from cai.engines import EngineConfig
    from cai.judge.check import SHIPPED, cache_key
    from scripts.ship_judge_check import shipped_judge_config

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    shipped = sorted((REPO / "prompts" / SHIPPED).glob("*.json"))
    key = cache_key(EmbeddedOnCpu(EngineConfig(gpu_memory_utilization=0.15)), shipped_judge_config())
    assert [p.stem for p in shipped] == [key], "stale shipped judge check: run scripts/ship_judge_check.py"
    quality = json.loads(shipped[0].read_text())
    assert quality["judge_format"] == "hybrid" and quality["checked_pairs"] == 148  # the whole shipped set
    assert 0 <= quality["accuracy"] <= 1 and quality["measured"]["at"] and "combiner" in quality
    # read back on a machine with an empty cache, named as shipped; CAI_RECHECK_JUDGE=1 measures anew instead
    import asyncio

    from cai.judge.check import check_judge, describe, made_before

    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    read = asyncio.run(check_judge(EmbeddedOnCpu(EngineConfig()), shipped_judge_config()))
    assert read["cached"] == "shipped" and read["accuracy"] == quality["accuracy"]
    assert read["passed"] == (quality["accuracy"] >= 0.7) and read["file"].endswith("judge-eval.jsonl")
    text = describe(read)
    assert f"measured {quality['measured']['at']} on {quality['measured']['on']}" in text
    assert "shipped with cai" in text and "CAI_RECHECK_JUDGE=1" in text
    assert not (tmp_path / "cache" / "judge-checks").exists()  # nothing measured, nothing written
    monkeypatch.setenv("CAI_RECHECK_JUDGE", "1")
    assert made_before(key, tmp_path / "cache" / "judge-checks" / f"{key}.json") is None


@pytest.mark.parametrize("recipe", ["quickstart.yaml", "quickstart-grpo.yaml"])
def test_every_judge_check_of_the_quickstart_recipes_is_the_shipped_one(recipe, monkeypatch):
    """Each stage of the quickstart recipes that checks the embedded judge (judge, eval, the GRPO reward) asks the
    check the shipped one answers, so a fresh machine runs them without measuring it (pure: configs and keys)."""
    from cai.config import EvalConfig, JudgeConfig
    from cai.evaluate.model import judge_config_of
    from cai.judge.check import SHIPPED, cache_key
    from cai.judge.reward import ConstitutionReward
    from cai.pipeline import load_recipe
    from cai.train.grpo_rewards import judge_options
    from cai.train.rl_config import GRPOConfig

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    settings = load_recipe(REPO / "recipes" / recipe).settings
    judges = []
    if "judge" in settings:
        judges.append(JudgeConfig(**{**settings["judge"], "source": "-"}))
    if "eval" in settings:
        judges.append(judge_config_of(EvalConfig(**{**settings["eval"], "trained": "x"})))
    if "grpo" in settings:
        judges.append(ConstitutionReward.configs(**judge_options(GRPOConfig(**{**settings["grpo"], "out": "x"})))[1])
    assert len(judges) == 2
    shipped = {p.stem for p in (REPO / "prompts" / SHIPPED).glob("*.json")}
    for judge in judges:
        assert judge.check_judge and judge.engine.model is None and not judge.engine.base_urls
        assert cache_key(EmbeddedOnCpu(judge.engine), judge) in shipped
