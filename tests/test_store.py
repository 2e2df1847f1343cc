"""Run folders: append-only records, torn-line repair, resume and conflicts (pure logic)."""

import json

import pytest

from cai.config import ConfigError, GenerateConfig, compat_settings, load_config
from cai.runs.store import RunConflictError, RunStore, check_run_name, latest_by_id, read_jsonl


def test_records_survive_reopen_and_torn_tail_is_cut(tmp_path):
    store = RunStore(tmp_path, "run1")
    assert store.open({"kind": "t"}, {"a": 1}) == []
    store.append({"id": "x", "status": "ok"})
    store.append({"id": "y", "status": "ok"})
    store.close()
    with open(store.records_path, "a") as f:
        f.write('{"id": "z", "sta')  # a crash in the middle of a write
    again = RunStore(tmp_path, "run1")
    assert [r["id"] for r in again.open({"kind": "t"}, {"a": 1})] == ["x", "y"]
    again.append({"id": "z", "status": "ok"})
    again.close()
    lines = store.records_path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["x", "y", "z"]
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["resumed"] == 1 and manifest["settings"] == {"a": 1} and manifest["kind"] == "t"
    assert manifest["inputs"] == {} and len(manifest["settings_hash"]) == 16


def test_resume_with_other_settings_is_refused(tmp_path):
    first = RunStore(tmp_path, "r")
    first.open({}, {"rounds": 1, "seed": 0})
    first.close()
    with pytest.raises(RunConflictError, match=r"changed: settings\.rounds\)"):
        RunStore(tmp_path, "r").open({}, {"rounds": 2, "seed": 0})


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", ".hidden", "", "x" * 200, "a b"])
def test_run_names_cannot_leave_the_output_folder(tmp_path, name):
    with pytest.raises(ValueError):
        RunStore(tmp_path, name)
    with pytest.raises(ValueError):
        check_run_name(name)


def test_latest_record_per_id_wins():
    records = [{"id": "a", "status": "error"}, {"id": "b", "status": "ok"}, {"id": "a", "status": "ok"}]
    assert latest_by_id(records) == {"a": {"id": "a", "status": "ok"}, "b": {"id": "b", "status": "ok"}}


def test_read_jsonl_skips_only_the_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id"')
    assert [r["id"] for r in read_jsonl(path)] == [1, 2]


def test_config_file_with_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rounds: 3\ntemperature: 0.2\nmax_new_tokens: {critique: 50}\nengine: {dtype: bfloat16}\n")
    config = load_config(GenerateConfig, path, {"rounds": 1, "engine.max_model_len": 1024, "limit": None})
    assert config.rounds == 1 and config.temperature == 0.2
    assert config.max_new_tokens.critique == 50 and config.max_new_tokens.initial == 256
    assert config.engine.dtype == "bfloat16" and config.engine.max_model_len == 1024
    assert config.engine.trust_remote_code is False


def test_config_unknown_key_and_bad_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("roundz: 3\n")
    with pytest.raises(ConfigError, match="roundz"):
        load_config(GenerateConfig, path)
    with pytest.raises(ConfigError, match="rounds"):
        load_config(GenerateConfig, None, {"rounds": -1})


def test_compat_ignores_settings_that_do_not_shape_records():
    a = GenerateConfig(limit=4, concurrency=8)
    b = GenerateConfig(limit=100, concurrency=256, output_dir="elsewhere")
    assert compat_settings(a) == compat_settings(b)
    assert compat_settings(a) != compat_settings(GenerateConfig(rounds=2))


def test_a_failed_write_is_a_clear_storage_error_and_earlier_records_stay(tmp_path, monkeypatch):
    """A disk-full write injected as OSError(ENOSPC) after two records (a stand-in for the real thing; the
    engine tests also run out of file-size quota for real)."""
    import errno

    from cai.runs.store import JsonlLog, StorageError

    store = RunStore(tmp_path, "full")
    store.open({}, {})
    original, calls = JsonlLog._write_line, []

    def fail_third(self, line):
        calls.append(line)
        if len(calls) == 3:
            self._file.write(line[:7])  # half a line reaches the disk, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, line)

    monkeypatch.setattr(JsonlLog, "_write_line", fail_third)
    store.append({"id": "a", "status": "ok"})
    store.append({"id": "b", "status": "ok"})
    with pytest.raises(StorageError, match=r"cannot write to .*records.jsonl: No space left on device \(2 records"):
        store.append({"id": "c", "status": "ok"})
    with pytest.raises(StorageError):  # the log stays failed: nothing is written after a gap
        store.append({"id": "d", "status": "ok"})
    store.close()  # does not raise a second error over the first
    assert [r["id"] for r in read_jsonl(store.records_path)] == ["a", "b"]
    monkeypatch.setattr(JsonlLog, "_write_line", original)
    again = RunStore(tmp_path, "full")
    assert [r["id"] for r in again.open({}, {})] == ["a", "b"]  # the torn half line is cut
    again.append({"id": "c", "status": "ok"})
    again.close()
    assert [json.loads(line)["id"] for line in store.records_path.read_text().splitlines()] == ["a", "b", "c"]


def test_remote_code_is_off_unless_asked_for():
    from cai.cli import build_parser
    from cai.engines import EngineConfig
    from cai.registry import TASKS

    assert EngineConfig().trust_remote_code is False
    assert all(cls.model_fields["trust_remote_code"].default is False for cls in (t.config_class() for t in TASKS.values()))
    args = build_parser().parse_args(["generate"])
    assert getattr(args, "engine.trust_remote_code") is None  # unset: the config's False stands
    args = build_parser().parse_args(["generate", "--trust-remote-code"])
    assert getattr(args, "engine.trust_remote_code") is True


def _open_close(tmp_path, manifest_and_settings):
    store = RunStore(tmp_path, "run")
    store.open(*manifest_and_settings)
    store.close()
    return json.loads(store.manifest_path.read_text())


def test_a_generate_resume_with_a_changed_setting_is_refused_and_the_manifest_has_the_shared_format(tmp_path):
    from cai.constitution import load_constitution
    from cai.generate.run import generate_manifest

    constitution = load_constitution("harmless")
    config = GenerateConfig(prompts="red-team", limit=2)
    manifest = _open_close(tmp_path, generate_manifest(config, constitution, []))
    assert manifest["kind"] == "generate" and manifest["settings"]["temperature"] == config.temperature
    assert set(manifest["inputs"]) == {"constitution", "templates", "model", "prompts"}
    assert len(manifest["settings_hash"]) == 16
    _open_close(tmp_path, generate_manifest(config.model_copy(update={"limit": 5, "concurrency": 3}), constitution, []))
    hotter = config.model_copy(update={"temperature": config.temperature + 0.5})
    with pytest.raises(RunConflictError, match=r"changed: settings\.temperature\)"):
        _open_close(tmp_path, generate_manifest(hotter, constitution, []))


def test_a_judge_resume_with_a_changed_setting_is_refused_and_the_manifest_has_the_shared_format(tmp_path):
    from cai.config import JudgeConfig
    from cai.constitution import load_constitution
    from cai.judge.run import judge_manifest

    constitution = load_constitution("harmless")
    config = JudgeConfig(source=str(tmp_path / "gen"), principles_per_pair=2)
    manifest = _open_close(tmp_path, judge_manifest(config, constitution))
    assert manifest["kind"] == "judge" and manifest["settings"]["principles_per_pair"] == 2
    assert set(manifest["inputs"]) == {"constitution", "templates", "model"} and len(manifest["settings_hash"]) == 16
    _open_close(tmp_path, judge_manifest(config.model_copy(update={"max_failure_rate": 0.5}), constitution))
    with pytest.raises(RunConflictError, match=r"changed: settings\.judge_format, settings\.principles_per_pair\)"):
        changed = config.model_copy(update={"principles_per_pair": 3, "judge_format": "pairwise"})
        _open_close(tmp_path, judge_manifest(changed, constitution))


def test_a_run_recorded_in_the_old_format_is_refused_with_a_clear_message(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"kind": "generate", "compat": {"seed": 0}}))
    with pytest.raises(RunConflictError, match="recorded without its settings .* another --run-name"):
        RunStore(tmp_path, "run").open({"kind": "generate"}, {"seed": 0})


def test_a_stage_attempt_records_a_rejected_request_and_a_failure_and_lets_a_dead_engine_stop_the_run(tmp_path):
    import asyncio

    from cai.engines import EngineDeadError, RequestError
    from cai.runs.stage import StageRun

    async def rejected():
        raise RequestError("prompt too long")

    async def broken():
        raise ValueError("bad output")

    async def fine():
        return 7

    async def dead():
        raise EngineDeadError("gone")

    async def main():
        run = StageRun(RunStore(tmp_path, "r"), {"kind": "t"}, {}, progress=False)
        async with run:
            assert await run.attempt("a", 0, rejected(), prompt="p") is None
            assert await run.attempt("b", 1, broken()) is None
            assert await run.attempt("c", 2, fine()) == 7
            with pytest.raises(EngineDeadError):
                await run.attempt("d", 3, dead())
        return run

    run = asyncio.run(main())
    records = [json.loads(line) for line in (tmp_path / "r" / "records.jsonl").read_text().splitlines()]
    assert [(r["id"], r["error"]["kind"], r["error"]["message"]) for r in records] == [
        ("a", "input", "prompt too long"), ("b", "sample", "ValueError: bad output")]
    assert records[0]["prompt"] == "p" and run.summary.errors == 2 and run.summary.ok == 0


def test_an_export_that_cannot_be_written_ends_the_run_with_one_message_and_no_half_file(tmp_path):
    """The records are whole; only the export fails (a full disk): RunFailed names the folder and says to rerun, and
    the atomic writer leaves no temporary file behind."""
    import errno

    from cai.runs.stage import RunFailed, StageRun
    from cai.runs.writers import write_jsonl_atomic

    run = StageRun(RunStore(tmp_path, "r"), {"kind": "t"}, {}, progress=False)
    out = tmp_path / "r" / "export"
    out.mkdir()

    class FullDisk(list):
        def __iter__(self):
            yield {"row": 1}
            raise OSError(errno.ENOSPC, "No space left on device")

    def export(path):
        write_jsonl_atomic(path / "export" / "sft.jsonl", FullDisk())

    with pytest.raises(RunFailed) as failed:
        run.finish(export, 1.0, "samples failed")
    message = str(failed.value)
    assert message.startswith(f"cannot write the export in {out}: No space left on device")
    assert "records.jsonl" in message and "rerun the same command" in message
    assert list(out.iterdir()) == []
    run.store.close()


def test_only_the_in_process_vllm_engine_can_be_a_sampling_engine_for_training():
    from cai.engines import EngineConfig, create_sampling_engine
    from cai.errors import UsageError

    for config in (EngineConfig(backend="openai", model="m", base_urls=["http://127.0.0.1:1/v1"]),
                   EngineConfig(model="openai/gpt-x")):
        with pytest.raises(UsageError, match="in-process vLLM engine"):
            create_sampling_engine(config)
