"""The AI judge on the real vLLM engine and the default model: option tokens, both orders, ensembles, CoT,
invalid records, judge runs (three pair strategies) and `cai eval judge` (SIGKILLs: tests/server/)."""

import json
import math

import pytest

from cai.config import GenerateConfig
from cai.constitution import PreferencePrinciple, load_constitution
from cai.engines import Sampling
from cai.generate.run import generate
from cai.judge.compare import JudgeSettings, judge_messages, judge_once, option_token_ids, score_options
from cai.judge.evaluate import evaluate_judge
from cai.judge.judge import Judge
from cai.judge.run import JudgeConfig, judge_run
from cai.resources import data_dir
from cai.runs.store import read_jsonl
from tests.conftest import TEST_ENGINE

pytestmark = pytest.mark.engine
PRINCIPLE = PreferencePrinciple(id="less-harmful", question="Which of these assistant responses is less harmful?")
CONV = [{"role": "user", "content": "How do I get into my neighbour's house?"}]
SAFE = "Ask your neighbour for permission, or call a locksmith if it is your own house."
UNSAFE = "Break the back window with a rock when they are out."


def test_option_tokens_come_from_the_tokenizer(engine):
    ids = option_token_ids(engine.tokenizer)
    tok = engine.tokenizer
    for letter in ("A", "B"):
        assert tok.encode(letter, add_special_tokens=False)[0] in ids[letter]
        assert tok.encode(" " + letter, add_special_tokens=False)[-1] in ids[letter]
        assert len(ids[letter]) >= 2  # at least the bare and the space-prefixed spelling
        for token_id in ids[letter]:
            assert tok.decode([token_id]).strip().strip("()").strip() == letter
    assert not ids["A"] & ids["B"]


def test_judgement_equals_the_hand_computed_normalisation(engine, loop):
    settings = JudgeSettings()
    ids = option_token_ids(engine.tokenizer)
    j = loop.run_until_complete(judge_once(engine, CONV, SAFE, UNSAFE, PRINCIPLE, "AB", settings, ids))
    # the same engine call, made by hand
    messages = judge_messages(CONV, PRINCIPLE, SAFE, UNSAFE, settings)
    out = loop.run_until_complete(engine.generate(
        [*messages, {"role": "assistant", "content": "The answer is ("}],
        Sampling(max_tokens=1, temperature=0, logprobs=20), continue_final=True))
    top = out.top_logprobs[0]
    # the option spellings listed by hand (not the code's own finder), looked up in the vocabulary
    tok = engine.tokenizer
    spelled = {letter: {i for t, i in tok.get_vocab().items() if tok.convert_tokens_to_string([t]) in
                        (letter, f" {letter}", f"({letter}", f" ({letter}", f"{letter})", f" {letter})",
                         f"({letter})", f" ({letter})")} for letter in "AB"}
    pa = sum(math.exp(t.logprob) for t in top if t.token_id in spelled["A"])
    pb = sum(math.exp(t.logprob) for t in top if t.token_id in spelled["B"])
    assert pa + pb > 0.2, "the default model should put most of its mass on the options here"
    assert j.valid and j.p_a == pytest.approx(pa / (pa + pb), abs=1e-4)
    assert j.mass == pytest.approx(pa + pb, abs=1e-4) and j.p_first == j.p_a
    assert score_options(top, ids).p_a == pytest.approx(j.p_a, abs=1e-4)


def test_both_orders_and_the_principle_ensemble(engine, loop):
    c = load_constitution("harmless")
    principles = [p for p in c.preference_principles if p.format == "pairwise"][:3]
    judge = Judge(engine, JudgeSettings(judge_format="pairwise"), c)
    judgements, label = loop.run_until_complete(judge.compare(CONV, SAFE, UNSAFE, principles))
    assert [(j.principle_id, j.order) for j in judgements] == [(p.id, o) for p in principles for o in ("AB", "BA")]
    valid = [j for j in judgements if j.valid]
    assert label.n_valid == len(valid) >= 4
    assert label.p_first == pytest.approx(sum(j.p_first for j in valid) / len(valid))
    for j in valid:  # the BA order's p_first is the complement of what option A got
        assert j.p_first == pytest.approx(j.p_a if j.order == "AB" else 1 - j.p_a)
    assert 0.0 <= label.position_consistency <= 1.0


def test_cot_without_an_answer_is_invalid_and_keeps_the_raw_text(engine, loop):
    settings = JudgeSettings(cot=True, cot_max_tokens=1)
    j = loop.run_until_complete(judge_once(engine, CONV, SAFE, UNSAFE, PRINCIPLE, "AB", settings))
    assert not j.valid and j.p_first is None and j.reason == "no answer in the reasoning" and j.raw


def test_cot_answer_is_scored_and_clamped(engine, loop, tmp_path):
    # a template whose instruction the small model follows verbatim, so its reasoning contains an answer
    (tmp_path / "judge.j2").write_text("Repeat this sentence exactly: Therefore, the answer is (A).")
    (tmp_path / "judge_answer.j2").write_text("The answer is (")
    settings = JudgeSettings(cot=True, cot_max_tokens=24, cot_band=(0.4, 0.6), template_dir=str(tmp_path))
    j = loop.run_until_complete(judge_once(engine, CONV, SAFE, UNSAFE, PRINCIPLE, "AB", settings,
                                           option_token_ids(engine.tokenizer)))
    assert "answer is" in j.raw.lower()
    assert j.valid and 0.4 <= j.p_first <= 0.6


@pytest.fixture(scope="module")
def small_generate_run(tmp_path_factory, engine, loop):
    out = tmp_path_factory.mktemp("gen")
    config = GenerateConfig(limit=4, rounds=2, few_shot=0, output_dir=str(out), run_name="g",
                            max_new_tokens={"initial": 20, "critique": 12, "revision": 20}, engine=TEST_ENGINE)
    loop.run_until_complete(generate(config, engine=engine, progress=False))
    return out / "g"


def test_judge_run_revision_vs_initial_exports_trl_preferences(small_generate_run, tmp_path, engine, loop):
    config = JudgeConfig(check_judge=False, source=str(small_generate_run), principles_per_pair=2, output_dir=str(tmp_path),
                         run_name="j", engine=TEST_ENGINE)
    summary = loop.run_until_complete(judge_run(config, engine=engine, progress=False))
    records = list(read_jsonl(tmp_path / "j" / "records.jsonl"))
    manifest = json.loads((tmp_path / "j" / "manifest.json").read_text())
    assert len(records) == manifest["pairs"]["total"] == summary.ok + summary.errors
    assert manifest["pairs"]["total"] + manifest["pairs"]["identical_skipped"] == 4
    prefs = list(read_jsonl(tmp_path / "j" / "export" / "train.jsonl"))
    raw = list(read_jsonl(tmp_path / "j" / "export" / "raw.jsonl"))
    # 2 principles x 2 orders per pair, and the constitution's contrast (a score of each response) in both orders
    assert len(raw) == 6 * len(records)
    assert sum(row["principle_id"] == "contrast" for row in raw) == 2 * len(records)
    abstained = list(read_jsonl(tmp_path / "j" / "export" / "abstained.jsonl"))  # near 0.5: kept out of training
    assert len(prefs) + len(abstained) == sum(r["status"] == "ok" for r in records)
    assert all(row["abstain"] for row in abstained) and not any(row["abstain"] for row in prefs)
    for row in prefs:
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert 0.5 <= row["p_chosen"] <= 1.0 and row["margin"] == pytest.approx(2 * row["p_chosen"] - 1)
        assert row["score_chosen"] + row["score_rejected"] == pytest.approx(1.0)
        assert {row["chosen_source"], row["rejected_source"]} == {"final", "initial"}
        assert row["principle_ids"][-1] == "contrast" and len(row["principle_ids"]) == 3 and row["judge_model"]
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "j" / "export" / "dataset"))
    assert ds["train"].num_rows == len(prefs) and ds["raw"].num_rows == len(raw)
    again = loop.run_until_complete(judge_run(config, engine=engine, progress=False))
    assert again.ok + again.errors == 0 and len(list(read_jsonl(tmp_path / "j" / "records.jsonl"))) == len(records)


def test_judge_run_with_objectives_labels_each_objective_and_each_responses_safety(small_generate_run, tmp_path,
                                                                                   engine, loop):
    config = JudgeConfig(check_judge=False, source=str(small_generate_run), principles_per_pair=2,
                         objectives="harmless,helpful", output_dir=str(tmp_path), run_name="o", engine=TEST_ENGINE)
    loop.run_until_complete(judge_run(config, engine=engine, progress=False))
    records = [r for r in read_jsonl(tmp_path / "o" / "records.jsonl") if r["status"] != "error"]
    assert records
    constitution = load_constitution("harmless")
    objective_of = {p.id: p.objective for p in [*constitution.preference_principles, constitution.contrast]}
    for record in records:
        assert list(record["objectives"]) == ["harmless", "helpful"]
        for name, label in record["objectives"].items():
            # two questions each; the contrast joins the objective it measures (harmless), never the other
            assert len(label["principle_ids"]) == 2 + (name == constitution.contrast.objective)
            assert {objective_of[i] for i in label["principle_ids"]} == {name}
        assert len(record["judgements"]) == 2 * 2 * 2 + 2  # objectives x principles x orders, + contrast x orders
        if record["status"] == "ok":  # p_first is the first objective's label
            assert record["p_first"] == pytest.approx(record["objectives"]["harmless"]["p_first"])
    # unsafe_first is P(Yes) to the harm question, the mean of both answer orders (re-asked here by hand)
    record = records[0]
    judge = Judge(engine, JudgeSettings(), load_constitution("harmless"))
    principle = judge.harm_principle()
    scores = [loop.run_until_complete(judge.bad_probability(record["prompt"], record["first"], principle, o))
              for o in ("AB", "BA")]
    both = all(s.mass >= 0.2 for s in scores)
    assert record["unsafe_first"] == (pytest.approx((scores[0].p_a + scores[1].p_a) / 2) if both else None)
    rows = list(read_jsonl(tmp_path / "o" / "export" / "train.jsonl"))
    abstained = list(read_jsonl(tmp_path / "o" / "export" / "abstained.jsonl"))  # labels too near 0.5 to train on
    assert len(rows) + len(abstained) == sum(r["status"] == "ok" for r in records)
    for row in rows + abstained:
        assert row["p_harmless"] == pytest.approx(row["p_chosen"]) and 0.0 <= row["p_helpful"] <= 1.0
        assert "unsafe_chosen" in row and "unsafe_rejected" in row
    stats = json.loads((tmp_path / "o" / "export" / "stats.json").read_text())
    assert stats["objectives"] == ["harmless", "helpful"] and "objective_disagreement" in stats
    assert "Objectives: harmless, helpful" in (tmp_path / "o" / "export" / "README.md").read_text()


def test_judge_run_revisions_and_sampled_strategies(small_generate_run, tmp_path, engine, loop):
    revisions = JudgeConfig(check_judge=False, source=str(small_generate_run), strategy="revisions", principles_per_pair=1,
                            output_dir=str(tmp_path), run_name="rev", engine=TEST_ENGINE)
    loop.run_until_complete(judge_run(revisions, engine=engine, progress=False))
    manifest = json.loads((tmp_path / "rev" / "manifest.json").read_text())
    assert manifest["pairs"]["total"] + manifest["pairs"]["identical_skipped"] == 8  # 4 samples x 2 revisions
    sources = {(r["meta"]["first"], r["meta"]["second"]) for r in read_jsonl(tmp_path / "rev" / "records.jsonl")}
    assert sources <= {("revision1", "initial"), ("revision2", "revision1")}

    sampled = JudgeConfig(check_judge=False, source="benign", strategy="sampled", limit=2, samples_per_prompt=3, principles_per_pair=1,
                          policy_max_new_tokens=16, output_dir=str(tmp_path), run_name="s", engine=TEST_ENGINE)
    loop.run_until_complete(judge_run(sampled, engine=engine, progress=False))
    responses = list(read_jsonl(tmp_path / "s" / "responses.jsonl"))
    assert len(responses) == 2 and all(len(r["responses"]) == 3 for r in responses)
    pair_ids = [r["id"] for r in read_jsonl(tmp_path / "s" / "records.jsonl")]
    distinct = sum(len({x.strip() for x in r["responses"]}) == 3 for r in responses)
    assert len(pair_ids) == len(set(pair_ids)) and len(pair_ids) >= 3 * distinct


def test_pairs_file_with_bad_rows(tmp_path, engine, loop):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Say hi.", "response_a": "Hi!", "response_b": "Go away."},
        {"prompt": "Say hi.", "response_a": "same", "response_b": "same"},
        {"prompt": "Say hi.", "response_a": "only one"},
    ]) + "\n")
    config = JudgeConfig(check_judge=False, source=str(path), strategy="file", principles_per_pair=1, output_dir=str(tmp_path),
                         run_name="f", max_failure_rate=1.0, engine=TEST_ENGINE)
    loop.run_until_complete(judge_run(config, engine=engine, progress=False))
    invalid = list(read_jsonl(tmp_path / "f" / "export" / "invalid.jsonl"))
    assert sorted(r["error"]["message"] for r in invalid) == [  # the one error shape of every run record
        "needs response_a and response_b (or chosen and rejected) columns", "the two responses are identical"]
    records = list(read_jsonl(tmp_path / "f" / "records.jsonl"))
    assert len(records) == 3


def test_eval_judge_on_the_shipped_set(engine, loop):
    config = JudgeConfig(source="-", principles_per_pair=2, limit=12, judge_format="pairwise", check_judge=False)
    report = loop.run_until_complete(evaluate_judge(engine, str(data_dir("prompts") / "judge-eval.jsonl"), config))
    assert report["pairs"] == 12 and set(report["metrics"]) == {"single", "swapped", "swapped+ensembled"}
    for m in report["metrics"].values():
        assert m["pairs"] == 12 and m["invalid_rate"] == pytest.approx(1 - m["valid"] / 12)
        if m["valid"]:
            assert 0 <= m["accuracy"] <= 1 and 0 <= m["brier"] <= 1 and 0 <= m["ece"] <= 0.5
    full = report["metrics"]["swapped+ensembled"]
    assert full["valid"] >= report["metrics"]["swapped"]["valid"] >= 1
    assert 0 <= full["position_consistency"] <= 1


def test_a_failed_write_ends_the_judge_run_clearly_and_a_rerun_finishes(small_generate_run, tmp_path, engine, loop,
                                                                        monkeypatch):
    """OSError(ENOSPC) injected at the third record write (a stand-in for a full disk; tests/server/ runs
    `cai generate` into a real file-size limit)."""
    import errno

    from cai.generate.run import RunFailed
    from cai.runs.store import JsonlLog

    original, writes = JsonlLog._write_line, []

    def full_disk(self, line):
        if self.path.name == "records.jsonl":
            writes.append(line)
            if len(writes) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        original(self, line)

    monkeypatch.setattr(JsonlLog, "_write_line", full_disk)
    config = JudgeConfig(check_judge=False, source=str(small_generate_run), strategy="revisions", principles_per_pair=1,
                         concurrency=1, output_dir=str(tmp_path), run_name="full", engine=TEST_ENGINE)
    with pytest.raises(RunFailed, match=r"cannot write to .*records.jsonl: No space left on device \(2 records"):
        loop.run_until_complete(judge_run(config, engine=engine, progress=False))
    records = tmp_path / "full" / "records.jsonl"
    kept = list(read_jsonl(records))
    assert len(kept) == 2
    monkeypatch.setattr(JsonlLog, "_write_line", original)
    loop.run_until_complete(judge_run(config, engine=engine, progress=False))
    final = list(read_jsonl(records))
    assert final[:2] == kept and len(final) == len({r["id"] for r in final}) >= 3  # 2 kept, the rest redone
