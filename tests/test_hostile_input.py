"""Hostile and careless input, round two (issue 17): published secrets, YAML bombs, overwritten models, locked
run folders. No model is loaded: each probe must be refused before anything heavy starts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.runs.redact import redact_secrets, redact_url
from cai.yaml_safe import YAMLInputError, load_yaml
from tests.processes import run as run_command

# nine levels of nine aliases: 9^9 strings once expanded (the classic "billion laughs", 597 bytes here)
BOMB = "\n".join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)])


def cai(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-m", "cai", *args], timeout=timeout)


# --- secrets in URLs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, expected", [
    ("http://user:SECRET@host:8000/v1", "http://***@host:8000/v1"),
    ("https://host/v1?api_key=SECRET&model=m", "https://host/v1?api_key=***&model=m"),
    ("http://h/v1?token=S1&sig=S2&X-Amz-Signature=S3&page=2", "http://h/v1?token=***&sig=***&X-Amz-Signature=***&page=2"),
    ("http://SECRETONLY@host/v1", "http://***@host/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
])
def test_urls_lose_their_credentials(url, expected):
    assert redact_url(url) == expected


def test_secrets_are_redacted_inside_any_written_structure():
    manifest = {"command": ["cai", "judge", "--base-url", "http://u:SECRET@h/v1"],
                "config": {"engine": {"base_urls": ["http://h/v1?api_key=SECRET"]}},
                "text": "see http://u:SECRET@h/v1 for details", "n": 3}
    redacted = redact_secrets(manifest)
    assert "SECRET" not in json.dumps(redacted)
    assert redacted["n"] == 3 and redacted["command"][:3] == ["cai", "judge", "--base-url"]


def test_a_run_manifest_written_through_the_store_holds_no_secret(tmp_path):
    from cai.runs.store import RunStore

    store = RunStore(tmp_path, "r")
    manifest = {"kind": "generate", "command": ["cai", "--base-url", "http://u:SECRET@h/v1?api_key=SECRET2"]}
    compat = {"engine": {"base_urls": ["http://u:SECRET@h/v1"]}}
    store.open(manifest, compat)
    store.update_manifest(engine={"base_urls": ["http://x:SECRET3@h/v1"]})
    store.close()
    text = (tmp_path / "r" / "manifest.json").read_text()
    assert "SECRET" not in text and text.count("***") >= 3
    again = RunStore(tmp_path, "r")  # resuming compares the stored (redacted) settings with redacted ones
    again.open(manifest, compat)
    again.close()


# --- YAML that would hang or mislead ----------------------------------------------------------------------------------
def test_the_alias_bomb_is_refused_at_once():
    assert len(BOMB.encode()) < 700
    started = time.monotonic()
    with pytest.raises(YAMLInputError, match="aliases"):
        load_yaml(BOMB, "bomb.yaml")
    assert time.monotonic() - started < 1.0  # measured before anything is built: a guard against expansion


def test_shared_blocks_and_merges_are_read_as_written_out():
    text = ("engine: &engine {model: m, dtype: bfloat16}\njudge: {engine: *engine}\n"
            "base: &base {lr: 0.1, steps: 3}\nsft:\n  <<: *base\n  steps: 5\n")
    assert load_yaml(text, "r.yaml") == {"engine": {"model": "m", "dtype": "bfloat16"},
                                         "judge": {"engine": {"model": "m", "dtype": "bfloat16"}},
                                         "base": {"lr": 0.1, "steps": 3}, "sft": {"lr": 0.1, "steps": 5}}


def test_aliases_that_nest_too_deep_once_expanded_are_refused():
    # 70 anchors, each a list holding the previous: 70 levels once expanded, 2 in the text
    lines = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 70)]
    with pytest.raises(YAMLInputError, match="levels deep"):
        load_yaml("\n".join(lines), "deep.yaml")


@pytest.mark.parametrize("text, message", [
    ("x: 1\nx: 2\n", "duplicate key 'x'"),
    ("a: &a [1, *a]\n", "refers to a block that contains it"),
    ("[" * 500 + "]" * 500, "nested"),
    ("a: [1, 2\n", "not valid YAML"),
])
def test_yaml_problems_name_the_file_and_line(text, message):
    with pytest.raises(YAMLInputError, match=message) as error:
        load_yaml(text, "cfg.yaml")
    assert str(error.value).startswith("cfg.yaml:")


@pytest.mark.parametrize("command", ["generate", "judge"])
def test_a_bomb_in_a_config_file_is_a_clear_error(tmp_path, command):
    config = tmp_path / "bomb.yaml"
    config.write_text("engine:\n  extra:\n" + "\n".join("    " + line for line in BOMB.splitlines()) + "\n")
    done = cai(command, "--config", str(config), timeout=60)
    assert done.returncode == 2 and "aliases" in done.stderr and "Traceback" not in done.stderr


def test_a_bomb_in_a_recipe_and_in_a_constitution_is_a_clear_error(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: r\nstages: [generate]\ngenerate:\n  engine:\n    extra:\n" +
                      "\n".join("      " + line for line in BOMB.splitlines()) + "\n")
    done = cai("run", str(recipe), timeout=60)
    assert done.returncode == 2 and "aliases" in done.stderr and "Traceback" not in done.stderr
    constitution = tmp_path / "c.yaml"
    constitution.write_text("name: c\n" + BOMB + "\n")
    done = cai("constitution", "validate", str(constitution), timeout=60)
    assert done.returncode == 2 and "aliases" in done.stderr and "Traceback" not in done.stderr


def test_untyped_engine_arguments_are_bounded(tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text(json.dumps({"engine": {"extra": {"x": "y" * 70_000}}}))
    done = cai("generate", "--config", str(config), timeout=60)
    assert done.returncode == 2 and "at most 65536" in done.stderr
    done = cai("generate", "--engine-arg", "x=[unclosed", timeout=60)
    assert done.returncode != 0 and "--engine-arg x" in done.stderr and "Traceback" not in done.stderr


# --- outputs that would destroy inputs or earlier work ------------------------------------------------------------------
def tiny_model_folder(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import save, tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    save(tiny_causal_lm(tok), tok, folder)
    return folder


def pairs(folder: Path) -> Path:
    path = folder / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "hello", "chosen": "hello world", "rejected": "no"}) + "\n")
    return path


@pytest.mark.model
@pytest.mark.parametrize("where", ["model", "inside-model", "data"])
def test_training_refuses_to_write_into_its_own_inputs(tmp_path, where):
    model = tiny_model_folder(tmp_path / "m")
    data = pairs(tmp_path)
    before = (model / "model.safetensors").read_bytes()
    out = {"model": model, "inside-model": model / "sub", "data": data}[where]
    done = cai("train", "dpo", "--model", str(model), "--data", str(data), "--out", str(out))
    assert done.returncode == 2 and "would overwrite its own input" in done.stderr, done.stderr[-500:]
    assert (model / "model.safetensors").read_bytes() == before and not (model / "metrics.jsonl").exists()


@pytest.mark.model
def test_training_refuses_a_non_empty_out_unless_told(tmp_path):
    from cai.train.config import DPOConfig
    from cai.train.outputs import OutputError, check_output

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config = DPOConfig(data=str(tmp_path / "nowhere.jsonl"), out=str(out), model=str(tiny_model_folder(tmp_path / "m")))
    with pytest.raises(OutputError, match="not empty .*notes.txt.*--overwrite"):
        check_output(config)
    check_output(config.model_copy(update={"overwrite": True}))
    (out / "notes.txt").unlink()
    from cai.runs.store import RunConflictError
    from cai.train.outputs import train_fields

    (out / "train_manifest.json").write_text("{}")  # an earlier training run, recorded without its settings
    with pytest.raises(OutputError, match="--resume to continue it"):
        check_output(config)
    with pytest.raises(RunConflictError, match="without its settings"):
        check_output(config.model_copy(update={"resume": True}))
    (out / "train_manifest.json").write_text(json.dumps(train_fields(config)))
    check_output(config.model_copy(update={"resume": True}))


def test_constitution_import_refuses_to_overwrite_its_input(tmp_path):
    source = tmp_path / "x.json"
    source.write_text(json.dumps({"harmful0": {"prompt": ["Is it harmful?"], "edit_request": "Make it safe."}}))
    before = source.read_text()
    done = cai("constitution", "import", str(source), "--out", str(source))
    assert done.returncode == 2 and "is the file being imported" in done.stderr
    assert source.read_text() == before


def test_a_second_run_into_a_locked_folder_stops_at_once(tmp_path):
    from cai.runs.store import FolderInUseError, FolderLock, RunStore

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from cai.runs.store import FolderLock; "
        f"FolderLock(Path({str(tmp_path / 'run')!r})).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=f"in use by pid {holder.pid}"):
            RunStore(tmp_path, "run").open({"kind": "generate"}, {})
        assert not (tmp_path / "run" / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    store = RunStore(tmp_path, "run")  # the holder died: its lock went with it
    store.open({"kind": "generate"}, {})
    store.close()
    FolderLock(tmp_path / "run").acquire().release()  # closed stores release their lock


# --- changed inputs never mix with old outputs ------------------------------------------------------------------------
def recipe_with(tmp_path: Path, constitution: Path, **sft) -> object:
    from cai.pipeline import Recipe, load_recipe

    data = load_recipe("quickstart").model_dump()
    data.update(output_dir=str(tmp_path), name="r")
    data["generate"]["constitution"] = str(constitution)
    data["judge"]["constitution"] = str(constitution)
    data["sft"].update(sft)
    return Recipe(**data)


def test_a_stage_is_stale_when_anything_upstream_changed(tmp_path):
    import shutil

    from cai.pipeline import Pipeline
    from cai.resources import data_dir

    constitution = tmp_path / "mine.yaml"
    shutil.copy(data_dir("constitutions") / "harmless.yaml", constitution)
    first = Pipeline(recipe_with(tmp_path, constitution))
    first.run.mkdir()
    for stage in first.recipe.stages:
        first._mark(stage, 1.0)
    assert all(first.is_done(s) for s in first.recipe.stages)
    # other SFT settings: SFT and everything reading from it is stale, generate and judge are not
    changed = Pipeline(recipe_with(tmp_path, constitution, learning_rate=3e-5))
    assert [s for s in changed.recipe.stages if changed.is_done(s)] == ["generate", "judge"]
    # an edited constitution (same path): everything is stale
    constitution.write_text(constitution.read_text().replace("name: harmless", "name: harmless-edited", 1))
    edited = Pipeline(recipe_with(tmp_path, constitution))
    assert not any(edited.is_done(s) for s in edited.recipe.stages if s != "report")


def test_a_resumed_run_refuses_an_edited_constitution(tmp_path):
    import shutil

    from cai.constitution import load_constitution
    from cai.resources import data_dir
    from cai.runs.fingerprint import input_fingerprints
    from cai.runs.store import RunConflictError, RunStore

    path = tmp_path / "mine.yaml"
    shutil.copy(data_dir("constitutions") / "harmless.yaml", path)
    inputs = input_fingerprints(load_constitution(path), None, "red-team", None)
    store = RunStore(tmp_path, "run")
    store.open({"kind": "generate", "inputs": inputs}, {"seed": 0})
    store.close()
    path.write_text(path.read_text().replace("name: harmless", "name: harmless-edited", 1))
    edited = input_fingerprints(load_constitution(path), None, "red-team", None)
    with pytest.raises(RunConflictError, match=r"changed: inputs\.constitution\)"):
        RunStore(tmp_path, "run").open({"kind": "generate", "inputs": edited}, {"seed": 0})


def test_a_judge_pair_with_edited_content_is_judged_again():
    from cai.judge.pairs import Pair
    from cai.judge.run import Done

    pair = Pair("p1/final-vs-initial", [{"role": "user", "content": "hi"}], "hello", "no")
    done = Done({"p1/final-vs-initial": {"id": "p1/final-vs-initial", "status": "ok", "pair_sha": pair.digest}})
    assert pair in done
    edited = Pair(pair.id, pair.prompt, "hello there", "no")
    assert edited not in done  # same id, other content: not done
    legacy = Done({pair.id: {"id": pair.id, "status": "ok"}})  # a record from before digests: still counts
    assert edited in legacy


# --- bad values and malformed files: one line, before anything loads -------------------------------------------------
DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize("args, message", [
    (["judge", "x", "--cot-band", "0.9", "0.1"], "cot_band (0.9, 0.1) must satisfy"),
    (["judge", "x", "--cot-band", "nan", "nan"], "finite number"),
    (["judge", "x", "--min-option-mass", "5"], "min_option_mass"),
    (["judge", "x", "--limit", "0"], "limit"),
    (["judge", "x", "--principles", "-2"], "principles_per_pair"),
    (["eval", "judge", "--top-logprobs", "0"], "top_logprobs"),
    (["generate", "--temperature", "inf"], "temperature: Input should be a finite number"),
    (["generate", "--templates", "/no/such/folder"], "is not a folder"),
    (["train", "dpo", "--data", "d", "--out", "o", "--learning-rate", "inf"], "finite number"),
    (["report", "typo/path"], "is not a folder"),
])
def test_bad_values_are_refused_before_anything_starts(args, message, tmp_path):
    done = run_command([sys.executable, "-m", "cai", *args], timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-800:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "typo").exists() and not (tmp_path / "outputs").exists()


def test_config_file_values_too(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("early_stop: true\nearly_stop_patterns: ['(unclosed']\n")
    done = cai("generate", "--config", str(config))
    assert done.returncode == 2 and "is not a regular expression" in done.stderr
    constitution = tmp_path / "c2.yaml"
    constitution.write_text("name: My Constitution\nprinciples:\n  - id: a\n    critique_request: Is it bad?\n"
                            "    revision_request: Make it good.\n    weight: .inf\n")
    done = cai("constitution", "validate", str(constitution))
    assert done.returncode == 2 and "name: String should match pattern" in done.stderr
    assert "weight: Input should be a finite number" in done.stderr
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages: []\n")
    done = cai("run", str(recipe))
    assert done.returncode == 2 and "stages" in done.stderr


def test_malformed_imports_and_nested_json_name_the_file(tmp_path):
    (tmp_path / "swarm.json").write_text(json.dumps({"constitutions": [1, 2]}))
    done = cai("constitution", "import", str(tmp_path / "swarm.json"))
    assert done.returncode == 2 and "must be a list of objects" in done.stderr
    (tmp_path / "deep.json").write_text(DEEP)
    done = cai("constitution", "import", str(tmp_path / "deep.json"))
    assert done.returncode == 2 and "nested too deeply" in done.stderr and "Traceback" not in done.stderr


def test_prompt_rows_with_nested_json_or_bad_tags_are_error_records(tmp_path):
    from cai.inputs import InputProblem, load_prompts

    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([json.dumps({"prompt": "fine"}), DEEP, json.dumps({"prompt": "x", "tags": 5})]) + "\n")
    items = load_prompts(str(path))
    assert not isinstance(items[0], InputProblem)
    assert isinstance(items[1], InputProblem) and "nested too deeply" in items[1].reason
    assert isinstance(items[2], InputProblem) and "`tags` must be" in items[2].reason


@pytest.mark.model
@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "hello", "chosen": "yes", "rejected": "no", "p_chosen": True}], "p_chosen must be a number"),
    ([{"prompt": "hello", "chosen": "yes", "rejected": "no", "p_chosen": 0.7},
      {"prompt": "hello", "chosen": "sure", "rejected": "no"}], "row 1 is missing column(s) p_chosen"),
    ([{"prompt": "hello", "chosen": "yes", "rejected": "no", "p_chosen": 0.7},
      {"prompt": "hello", "chosen": "sure"}], "row 1 is missing column(s) rejected"),
    ([{"prompt": [{"role": "user", "content": 5}], "chosen": "yes", "rejected": "no", "p_chosen": 0.7}],
     "with text content"),
])
def test_bad_training_rows_are_refused_before_the_weights_load(tmp_path, rows, message, capsys):
    """In this process (`cai.cli.main`, as the command runs it): the exit code and the one line on stderr."""
    from cai.cli import main

    model = tiny_model_folder(tmp_path / "m")
    (model / "model.safetensors").write_bytes(b"not weights")  # loading these would fail: the data must fail first
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["train", "dpo", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--loss-type", "soft", "--no-progress"])
    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr, stderr[-800:]
    assert "cannot load model" not in stderr
    if message.startswith("p_chosen"):  # once: deeply nested JSON is refused the same way
        deep = tmp_path / "deep.jsonl"
        deep.write_text(DEEP + "\n")
        code = main(["train", "dpo", "--model", str(model), "--data", str(deep), "--out", str(tmp_path / "o")])
        assert code == 2 and "nested too deeply" in capsys.readouterr().err


def test_judge_reads_its_pairs_before_any_engine_or_folder(tmp_path):
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("not json\n" + json.dumps({"prompt": "a", "chosen": "same", "rejected": "same"}) + "\n")
    done = cai("judge", str(pairs_file), "--strategy", "file", "--output-dir", str(tmp_path / "out"),
               "--model", "/no/such/model")
    assert done.returncode == 2 and "no pairs to judge" in done.stderr, done.stderr[-800:]
    assert not (tmp_path / "out").exists()
    done = cai("eval", "judge", str(pairs_file), "--out", str(tmp_path / "r.json"))
    assert done.returncode == 2 and "no usable labelled pairs" in done.stderr


def test_run_files_that_were_edited_or_damaged_are_named(tmp_path):
    from cai.runs.store import CorruptRunError, RunConflictError, RunStore

    run = tmp_path / "r"
    run.mkdir()
    (run / "records.jsonl").write_text(json.dumps({"id": "a", "status": "ok"}) + "\n")
    with pytest.raises(RunConflictError, match="no manifest.json"):  # nothing says which settings made these
        RunStore(tmp_path, "r").open({}, {})
    (run / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CorruptRunError, match="manifest.json: expected a JSON object"):
        RunStore(tmp_path, "r").open({}, {})
    (run / "manifest.json").write_text("garbage")
    with pytest.raises(CorruptRunError, match="manifest.json: not valid JSON"):
        RunStore(tmp_path, "r").open({}, {})
    (run / "manifest.json").write_text(json.dumps({"kind": None, "settings": {}, "inputs": {}}))
    for bad, message in (("garbage\n", "records.jsonl:2: not a JSON record"),
                         ('{"status": "ok"}\n', "records.jsonl:2: expected a JSON object with id, status"),
                         ("[1]\n", "records.jsonl:2: expected a JSON object")):
        (run / "records.jsonl").write_text(json.dumps({"id": "a", "status": "ok"}) + "\n" + bad)
        with pytest.raises(CorruptRunError, match=re.escape(message)):
            RunStore(tmp_path, "r").open({}, {})


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    from cai.runs.store import RunStore

    run = tmp_path / "r"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"kind": None, "settings": {}, "inputs": {}}))
    (run / "records.jsonl").write_text(json.dumps({"id": "a", "status": "ok"}) + "\n" +
                                       json.dumps({"id": "b", "status": "ok"}))  # whole, newline lost
    store = RunStore(tmp_path, "r")
    assert [r["id"] for r in store.open({}, {})] == ["a", "b"]
    store.append({"id": "c", "status": "ok"})
    store.close()
    assert [json.loads(line)["id"] for line in (run / "records.jsonl").read_text().splitlines()] == ["a", "b", "c"]
    (run / "records.jsonl").write_text(json.dumps({"id": "a", "status": "ok"}) + '\n{"id": "b", "sta')  # torn
    store = RunStore(tmp_path, "r")
    assert [r["id"] for r in store.open({}, {})] == ["a"]
    store.close()


# --- a test that hangs fails, with stacks, and leaves nothing behind (tests/processes.py) -------------------------
_HANGING_LAUNCHER = """
import subprocess, sys, time
# a 'worker' in a session of its own (as the elastic launcher starts them), holding the launcher's stdout
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print("launched", flush=True)
time.sleep(600 if sys.argv[1] == "hang" else 0)
"""


def test_a_hung_command_fails_with_every_stack_and_no_process_survives(tmp_path):

    script = tmp_path / "launcher.py"
    script.write_text(_HANGING_LAUNCHER)
    started = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        run_command([sys.executable, str(script), "hang"], timeout=5)
    assert time.monotonic() - started < 120
    message = str(failure.value)
    assert "did not finish in 5 s" in message
    assert message.count("--- pid ") == 2  # the launcher and its worker in the other session
    assert message.count("Thread ") >= 2 and "<module> (" in message  # py-spy's stacks, not just the pids
    leftovers = [pid for pid in _pids_running(str(script))]
    assert leftovers == []


def test_a_worker_left_behind_by_a_finished_launcher_fails_the_test_and_is_killed(tmp_path):
    script = tmp_path / "launcher.py"
    script.write_text(_HANGING_LAUNCHER)
    with pytest.raises(AssertionError, match="left processes behind"):
        run_command([sys.executable, str(script), "exit"], timeout=60)
    assert _pids_running("time.sleep(600)") == []


def _pids_running(fragment: str) -> list[int]:
    import os as _os

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != _os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if fragment in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


def test_every_yaml_parse_goes_through_the_one_reader():
    """A constitution copied into a run's manifest is read back by review, the report and the degenerate-revision
    check: a manifest from someone else's run folder must meet the same alias and depth limits as a file given on
    the command line, so no module parses YAML except cai/yaml_safe.py."""
    import ast

    from tests.conftest import REPO

    offenders = []
    for path in sorted((REPO / "cai").rglob("*.py")):
        if path.name == "yaml_safe.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml" \
                    and node.attr in {"load", "safe_load", "full_load", "unsafe_load", "load_all", "safe_load_all"}:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} yaml.{node.attr}")
    assert offenders == []


def test_a_yaml_bomb_in_a_run_manifest_is_refused_when_review_reads_it(tmp_path):
    from cai.review.review import principle_questions

    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "judge", "constitution": {"text": BOMB}}))
    with pytest.raises(YAMLInputError, match="aliases"):
        principle_questions(tmp_path)
