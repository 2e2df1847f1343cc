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
