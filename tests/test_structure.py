"""The shape of the code (issue 24): one registry that a new stage joins with one entry, no import cycles (function-
level imports included, read with ast), at most 15 modules at the top of cai/, no module over 350 lines, no function
over 60, help text on every option of every command, and a README that names every stage, task and module."""

from __future__ import annotations

import argparse
import ast
import asyncio
import re
from pathlib import Path

import pytest

from cai.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CAI = REPO / "cai"


def modules() -> dict[str, Path]:
    found = {}
    for path in CAI.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the cai modules it imports anywhere in its text (a submodule import counts for the submodule)."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base] * bool(base))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name) if name.split(".")[0] == "cai" else None
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_cai():
    assert cycles(import_graph()) == []


def test_at_most_15_modules_at_the_top_and_none_too_long():
    top = [p for p in CAI.glob("*.py")]
    assert len(top) <= 15, sorted(p.name for p in top)
    too_long = {str(p.relative_to(REPO)): n for p in CAI.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert too_long == {}
    long_functions = []
    for path in CAI.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert long_functions == []


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(REPO)) for p in CAI.rglob("*.py") if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert missing == []


def test_every_option_of_every_command_has_help_text():
    from cai.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        bare = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    bare += walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                bare.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return bare

    assert walk(build_parser(), "cai") == []


def test_registry_cli_recipe_schema_and_readme_agree():
    from cai.cli import build_parser
    from cai.pipeline import Recipe
    from cai.registry import STAGES, TASKS

    train = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    choices = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(TASKS) <= set(choices) and set(choices) - set(TASKS) == {"online"}  # the old spelling kept
    recipe = Recipe(name="r", stages=list(STAGES), **{name: {} for name in STAGES})
    assert recipe.stages == list(STAGES)
    assert Recipe(name="r", stages=["online"], online={"rounds": 2}).settings == {"online-dpo": {"rounds": 2}}
    with pytest.raises(ValueError, match="unknown stage"):
        Recipe(name="r", stages=["grpo-typo"])
    readme = (REPO / "README.md").read_text()
    assert [s for s in STAGES if f"`{s}`" not in readme] == []


def test_the_readme_layout_table_names_every_module():
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## The pipeline and where it lives"):readme.index("## Writing a constitution")]
    rows = [line for line in layout.splitlines() if line.startswith("| `")]
    missing = []
    for path in CAI.rglob("*.py"):
        relative = path.relative_to(CAI)
        if relative.name == "__init__.py":
            continue
        folder = f"`{relative.parent}/`" if relative.parent != Path(".") else None
        row = next((r for r in rows if r.split("|")[1].strip().startswith(folder)), "") if folder else \
            next((r for r in rows if f"`{relative.name}`" in r.split("|")[1]), "")
        if f"`{relative.name}`" not in row:
            missing.append(str(relative))
    assert missing == []


# --- a new stage is one module and one registry entry ----------------------------------------------------------------
class CountWordsConfig(Settings):
    """A throw-away stage's settings: the word to count in the generate stage's prompts."""

    word: str
    """The word to count."""
    out: str = ""


def build_count_words(pipeline, settings: dict) -> CountWordsConfig:
    return CountWordsConfig(**{**settings, "out": str(pipeline.run / "count-words")})


async def run_count_words(pipeline, config: CountWordsConfig, engine, progress: bool) -> None:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "count.txt").write_text(str(len(re.findall(config.word, "a b a c a"))))


def test_a_new_stage_is_one_entry_and_runs_through_cai_run(tmp_path):
    from cai.pipeline import Pipeline, Recipe
    from cai.registry import Stage, register

    remove = register(Stage("count-words", "count a word", "tests.test_structure:CountWordsConfig",
                            "tests.test_structure:build_count_words", "tests.test_structure:run_count_words"))
    try:
        recipe = Recipe(name="throwaway", output_dir=str(tmp_path), stages=["count-words"],
                        **{"count-words": {"word": "a"}})
        pipeline = Pipeline(recipe)
        outcome = asyncio.run(pipeline.execute(progress=False))
        assert outcome["count-words"].startswith("done")
        assert (tmp_path / "throwaway" / "count-words" / "count.txt").read_text() == "3"
        again = asyncio.run(Pipeline(recipe).execute(progress=False))
        assert again == {"count-words": "skipped (done)"}  # finished, with the same settings: not rerun
        with pytest.raises(Exception, match="word"):
            Pipeline(Recipe(name="t", output_dir=str(tmp_path), stages=["count-words"]))  # its config is validated
    finally:
        remove()
    with pytest.raises(ValueError, match="unknown stage"):
        Recipe(name="t", stages=["count-words"])
