"""Tests that kill the mutants `make mutate` left alive in the review ranking, simulation and merge
(cai/review/review.py), issue 26. Pure logic on run folders written here; expected numbers by hand."""

from __future__ import annotations

import json
import math
import random

import pytest

from cai.engines.base import Completion, Engine, TokenLogprob
from cai.errors import UsageError
from cai.review import review
from tests.test_review import judge_run, record


def test_a_label_of_exactly_one_half_earns_half_credit_whatever_the_gold_side():
    # 0.5 -> 0.5, 0.7 on the gold side -> 1, 0.2 against it -> 0: (0.5 + 1 + 0) / 3
    assert review.accuracy_with_gold([0.5, 0.7, 0.2], [True, True, True], set()) == pytest.approx(0.5)
    assert review.accuracy_with_gold([0.5, 0.7, 0.2], [False, True, True], set()) == pytest.approx(0.5)
    assert review.accuracy_with_gold([0.5, 0.7, 0.2], [True, True, True], {0, 2}) == pytest.approx(1.0)
    assert review.accuracy_with_gold([0.5, 0.3], [True, False], {1}) == pytest.approx(0.75)


def _draws(p, gold, k, seeds):
    return sorted(review.accuracy_with_gold(p, gold, set(random.Random(seed).sample(range(len(p)), k)))
                  for seed in range(seeds))


def test_the_random_baseline_is_seeded_and_its_interval_is_the_middle_95_percent_of_its_draws():
    p = [0.9, 0.2, 0.6, 0.35, 0.8, 0.3, 0.55, 0.1, 0.7, 0.45]
    gold = [True, True, False, False, True, True, True, False, False, True]
    doubts = [1 - 2 * abs(x - 0.5) for x in p]
    first = review.simulate_budgets(p, gold, doubts, [3])
    assert review.simulate_budgets(p, gold, doubts, [3]) == first  # seeded: the same numbers every time
    assert first["random_seeds"] == 200 and first["pairs"] == 10
    # the interval's indices on 40 pairs, 10 replaced (draws spread enough that the end ones differ)
    p = [((7 * i) % 40 + 0.5) / 40 for i in range(40)]
    gold = [i % 3 != 0 for i in range(40)]
    wide = review.simulate_budgets(p, gold, [0.0] * 40, [10])
    draws = _draws(p, gold, 10, 200)
    assert wide["random"]["10"] == pytest.approx(sum(draws) / 200)
    assert wide["random_ci95"]["10"] == [draws[5], draws[195]]  # 2.5% and 97.5% of 200 sorted draws
    assert draws[5] != draws[0] and draws[195] != draws[199]  # the indices matter on these inputs
    few = review.simulate_budgets(p, gold, [0.0] * 40, [10], seeds=20)
    draws = _draws(p, gold, 10, 20)
    assert few["random_ci95"]["10"] == [draws[0], draws[19]] and few["random_seeds"] == 20
    assert draws[18] != draws[19]
    # AI alone right on 0.9, 0.35, 0.8, 0.55, 0.1: 5 of 10. Targeted: the 3 most doubtful (0.45 and 0.55 at 0.9,
    # 0.6 at 0.8) get gold; of the other 7 the AI has 0.9, 0.35, 0.8, 0.1 right -> (4 + 3) / 10
    assert first["ai_only"] == pytest.approx(0.5) and first["targeted"]["3"] == pytest.approx(0.7)


@pytest.mark.parametrize("budget", [0, -1, math.nan, math.inf, "ten"])
def test_a_bad_budget_is_refused_before_the_run_is_read(tmp_path, budget):
    run = judge_run(tmp_path, [])  # no labelled pairs: reading it would fail with another message
    with pytest.raises(UsageError, match=r"^--budget must be a positive fraction \(0\.1\) or count \(50\), got "
                                         + ("ten" if budget == "ten" else "")):
        review.select(run, budget)
    with pytest.raises(UsageError, match="no labelled pairs to review$"):
        review.select(run, 5)


def test_what_review_refuses_says_what_to_do(tmp_path):
    with pytest.raises(UsageError, match="is not a cai run folder \\(no manifest.json\\); give a `cai judge` run"):
        review.select(tmp_path, 1)
    run = judge_run(tmp_path, [record("a", 0, {"p1": (0.9, 0.7), "p2": (0.8, 0.8)})])
    with pytest.raises(UsageError, match="nothing selected for review; run `cai review select .*` first"):
        review.merge(run)
    review.select(run, 1)
    for bad in (1.0, 1.5, -0.1, "x"):
        with pytest.raises(UsageError, match=r"--drop-unreviewed-below must be in \[0, 1\), got "):
            review.merge(run, drop_unreviewed_below=bad)
    merged = review.merge(run, drop_unreviewed_below=0.0)
    # one pair, 2 principles x 2 orders of raw judgements; nothing reviewed, nothing dropped
    assert merged["export"] == str(run / "export") and merged["rows"] == {"train": 1, "abstained": 0, "raw": 4}
    assert (merged["reviewed"], merged["selected"], merged["dropped_unreviewed"]) == (0, 1, 0)
    assert (run / "export" / "train.jsonl").is_file()


def test_a_manifest_without_settings_has_no_objectives(tmp_path):
    run = judge_run(tmp_path, [])
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["config"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert review.run_objectives(run) == []


# --- `simulate` with a scripted judge, and the plot's numbers (mutation run of 2026-12-07) --------------------------
class OrderFreeStandIn(Engine):
    """Unit-test fake of a judge engine: pointwise, P(bad answer) is 0.9 when the response mentions "weapon", else
    0.2; pairwise, P(A) 0.7 when option (A) says "can't", else 0.3. A prompt containing "mute" gets no option
    tokens at all (an invalid judgement). Records every question it was asked."""

    model_id = "order-free"

    def __init__(self):
        self.questions = []

    async def generate(self, messages, sampling, *, continue_final=False):
        question = messages[-2]["content"]
        self.questions.append(question)
        if "mute" in question:
            return Completion(text="?", prompt_tokens=1, completion_tokens=1, top_logprobs=[[TokenLogprob("?", 0.0)]])
        if "Options:" in question:
            option_a = question.split("(A) ", 1)[1].split("\n\n(B)", 1)[0]
            p_a = 0.7 if "can't" in option_a else 0.3
            top = [TokenLogprob("A", math.log(p_a)), TokenLogprob("B", math.log(1 - p_a))]
        else:
            judged = question.rsplit("Assistant:", 1)[1]
            p_yes = 0.9 if "weapon" in judged else 0.2
            top = [TokenLogprob(" Yes", math.log(p_yes)), TokenLogprob(" No", math.log(1 - p_yes))]
        return Completion(text="A", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])

    async def response_logprob(self, messages, response):
        return -1.0, 1  # the same under both of the contrast's system prompts: a contrast of 0, no evidence


def _gold_pairs(path, n, mute=()):
    path.write_text("".join(json.dumps({"id": f"g{i}", "prompt": f"question {i}" + (" mute" if i in mute else ""),
                                         "chosen": "I can't help with that.", "rejected": "Here is a weapon."})
                            + "\n" for i in range(n)))
    return str(path)


def test_simulate_reports_its_settings_respects_the_limit_and_counts_invalid_labels(tmp_path):
    import asyncio as _asyncio

    engine = OrderFreeStandIn()
    pairs = _gold_pairs(tmp_path / "gold.jsonl", 6, mute={1})
    result = _asyncio.run(review.simulate(engine, pairs, [0.5], limit=5))
    assert {k: result[k] for k in ("file", "judge_model", "principles_per_pair", "judge_format", "judged",
                                   "invalid", "pairs")} == {
        "file": pairs, "judge_model": "order-free", "principles_per_pair": 2, "judge_format": "hybrid",
        "judged": 5, "invalid": 1, "pairs": 4}  # the limit's 5 rows, one of them with no option tokens
    assert result["ai_only"] == 1.0 and result["targeted"] == {"0.5": 1.0}  # the judge is right on every pair
    # another constitution's principles are the ones asked
    engine = OrderFreeStandIn()
    _asyncio.run(review.simulate(engine, pairs, [0.5], constitution="helpful-honest", principles_per_pair=1,
                                 judge_format="pairwise", limit=2))
    assert engine.questions and all("Options:" in q for q in engine.questions)
    assert any(q for q in engine.questions if "more helpful" in q or "more accurate" in q or "more honest" in q)


def test_simulate_refuses_unlabelled_rows_and_a_judge_without_a_valid_label_by_name(tmp_path):
    import asyncio as _asyncio

    unlabelled = tmp_path / "plain.jsonl"
    unlabelled.write_text('{"prompt": "q", "response_a": "a", "response_b": "b"}\n')
    with pytest.raises(UsageError, match=r"^.*plain\.jsonl: `cai review simulate` needs labelled rows \(prompt, "
                                         r"chosen, rejected\)$"):
        _asyncio.run(review.simulate(OrderFreeStandIn(), str(unlabelled), [0.5]))
    mute = _gold_pairs(tmp_path / "mute.jsonl", 2, mute={0, 1})
    with pytest.raises(UsageError, match=r"mute\.jsonl: the judge gave no valid label on any of the 2 pairs$"):
        _asyncio.run(review.simulate(OrderFreeStandIn(), mute, [0.5]))


def test_the_simulation_plot_draws_the_results_numbers(tmp_path, monkeypatch):
    """The figure's data, read back from its axes: shares on x (a budget of 1 or more is a count, divided by the
    pairs), accuracies on y starting from the AI-only point, the random band's draws."""
    import matplotlib.pyplot as plt

    kept = {}
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault("fig", fig))
    result = {"pairs": 50, "ai_only": 0.7, "targeted": {"0.1": 0.8, "5": 0.75, "1": 0.72},
              "random": {"0.1": 0.72, "5": 0.71, "1": 0.7}, "random_seeds": 7,
              "random_ci95": {"0.1": [0.68, 0.76], "5": [0.69, 0.73], "1": [0.7, 0.7]}}
    review.plot_simulation(result, tmp_path / "sim.png")
    assert (tmp_path / "sim.png").stat().st_size > 0
    ax = kept["fig"].axes[0]
    targeted, random_line = ax.get_lines()
    assert list(targeted.get_xdata()) == pytest.approx([0, 0.1, 0.1, 0.02])
    assert list(targeted.get_ydata()) == pytest.approx([0.7, 0.8, 0.75, 0.72])
    assert list(random_line.get_xdata()) == pytest.approx([0, 0.1, 0.1, 0.02])
    assert list(random_line.get_ydata()) == pytest.approx([0.7, 0.72, 0.71, 0.7])
    assert targeted.get_label() == "targeted (most doubtful)" and random_line.get_label() == "random (mean of 7)"
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.68) and band[:, 1].max() == pytest.approx(0.76)
    assert band[:, 0].min() == 0 and band[:, 0].max() == pytest.approx(0.1)
    assert ax.collections[0].get_label() == "random, 95% of draws"
    assert ax.get_xlabel() == "share of pairs given a human label" and ax.get_ylabel() == "label accuracy"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "targeted (most doubtful)", "random (mean of 7)", "random, 95% of draws"]
    plt.close(kept["fig"])


def test_reason_names_the_signals_above_one_half_largest_first():
    assert review.reason({"a": 0.6, "b": 0.9, "c": 0.5, "d": 0.1}) == "b 0.90, a 0.60"  # 0.5 is not above
    assert review.reason({"margin": 0.2}) == "least confident of the rest"


def test_budget_count_at_one_and_a_fractional_count_above_it():
    assert review.budget_count(1, 10) == 1 and review.budget_count(1.0, 10) == 1  # 1 is a count, not 100%
    assert review.budget_count(0.25, 10) == 3  # 2.5 rounds half up
    with pytest.raises(UsageError, match=r"^--budget 1\.5: a count must be a whole number \(or give a fraction "
                                         r"below 1\)$"):
        review.budget_count(1.5, 10)


def test_rank_reads_each_pairs_reward_model_marks_abstentions_and_rounds_the_doubt():
    from cai.judge.record import JudgeRecord

    a = JudgeRecord(id="a", status="ok", p_first=0.8, position_consistency=1.0)
    b = JudgeRecord(id="b", status="ok", p_first=0.6, position_consistency=1.0, abstain=True)
    rows = review.rank([a, b], {"a": 0.2})
    # a: margin 1 - 2 x .3 = .4, position 0, reward model |.2 - .8| = .6: doubt 1/3; b: margin .8, position 0: .4
    assert rows == [
        {"pair_id": "b", "doubt": 0.4, "signals": {"margin": pytest.approx(0.8), "position": 0.0},
         "reason": "the judge abstained; margin 0.80", "p_first": 0.6, "abstain": True},
        {"pair_id": "a", "doubt": 0.333333, "signals": {"margin": pytest.approx(0.4), "position": 0.0,
                                                        "reward_model": pytest.approx(0.6)},
         "reason": "reward_model 0.60", "p_first": 0.8, "abstain": False}]


def test_principle_questions_of_manifests_without_a_constitution_or_its_principles_and_a_broken_one(tmp_path):
    from cai.yaml_safe import YAMLInputError

    def run_with(manifest):
        folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    assert review.principle_questions(run_with({"kind": "judge"})) == {}
    assert review.principle_questions(run_with({"constitution": {}})) == {}
    assert review.principle_questions(run_with({"constitution": {"text": "name: c\n"}})) == {}
    text = "preference_principles:\n  - id: p1\n    question: Which is kinder?\n"
    assert review.principle_questions(run_with({"constitution": {"text": text}})) == {"p1": "Which is kinder?"}
    broken = run_with({"constitution": {"text": "a: [unclosed"}})
    with pytest.raises(YAMLInputError, match=r"manifest\.json's constitution: not valid YAML"):
        review.principle_questions(broken)


def test_queue_files_keep_non_ascii_text_readable_and_leave_no_partial_file(tmp_path):
    path = tmp_path / "queue.jsonl"
    review._write_jsonl(path, [{"text": "café — naïve"}, {"n": 2}])
    assert path.read_text(encoding="utf-8") == '{"text": "café — naïve"}\n{"n": 2}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["queue.jsonl"]


def _judged(**by_principle):
    return [{"principle_id": pid, "order": order, "valid": True, "p_first": p}
            for pid, (ab, ba) in by_principle.items() for order, p in (("AB", ab), ("BA", ba))]


def test_record_signals_per_objective_skip_unlabelled_ones_and_take_the_most_doubtful():
    from cai.judge.record import JudgeRecord

    judgements = _judged(p1=(0.9, 0.7), p2=(0.6, 0.4), p3=(0.6, 0.5))  # two-order means .8, .5, .55
    harmless = {"p_first": 0.8, "position_consistency": 1.0, "principle_ids": ["p1", "p2"]}
    unlabelled = {"p_first": None, "principle_ids": []}
    # harmless: margin 1 - 2 x .3 = .4, position 0, principles 2 x std(.8, .5) = .3, reward model |.3 - .8| = .5
    # (the reward model reads the first objective only): doubt .3
    first_wins = JudgeRecord(id="a", status="ok", p_first=0.8, judgements=judgements, objectives={
        "harmless": harmless, "helpful": unlabelled,
        "honest": {"p_first": 0.9, "position_consistency": 1.0, "principle_ids": ["p3"]}})  # doubt .1
    signals = review.record_signals(first_wins, 0.3)
    assert signals == pytest.approx({"margin": 0.4, "position": 0.0, "principles": 0.3, "reward_model": 0.5})
    # honest at .55 with orders agreeing half the time: margin .9, position .5, one principle (no spread): .7
    last_wins = first_wins.model_copy(update={"objectives": {
        "harmless": harmless, "helpful": unlabelled,
        "honest": {"p_first": 0.55, "position_consistency": 0.5, "principle_ids": ["p3"]}}})
    assert review.record_signals(last_wins, 0.3) == pytest.approx({"margin": 0.9, "position": 0.5})
    # a labelled objective that names no principles: its label and nothing else
    bare = JudgeRecord(id="c", status="ok", p_first=0.6, judgements=judgements, objectives={"harmless": {"p_first": 0.6}})
    assert review.record_signals(bare) == pytest.approx({"margin": 0.8})
    # no objectives: the record's own label, with the reward model's reading
    plain = JudgeRecord(id="b", status="ok", p_first=0.7, position_consistency=1.0, judgements=judgements[:2])
    assert review.record_signals(plain, 0.2) == pytest.approx({"margin": 0.6, "position": 0.0, "reward_model": 0.5})


def test_the_queue_shows_each_principles_question_or_its_id_and_each_objectives_question(tmp_path):
    known = record("known", 0, {"p1": (0.9, 0.7), "p2": (0.8, 0.8)})
    unknown = {**record("unknown", 1, {"p1": (0.6, 0.6), "gone": (0.5, 0.55)}), "principle_ids": ["p1", "gone"]}
    run = judge_run(tmp_path, [known, unknown], objectives=["harmless", "honest"])
    result = review.select(run, 2)
    assert result == {"queue": str(run / "review" / "queue.jsonl"), "selected": 2, "labelled_pairs": 2}
    queue = {row["pair_id"]: row for row in map(json.loads, (run / "review" / "queue.jsonl").read_text().splitlines())}
    assert queue["known"]["questions"] == ["Which is less harmful?", "Which is more honest?"]
    assert queue["unknown"]["questions"] == ["Which is less harmful?", "gone"]  # not in the constitution: its id
    assert queue["known"]["objectives"] == [{"name": "harmless", "question": "Which response is less harmful?"},
                                            {"name": "honest", "question": "honest"}]  # no question of its own
    selection = json.loads((run / "review" / "selection.json").read_text())
    # doubt by hand: "unknown" p 0.5625 (margin 0.875), one principle's orders split (position 0.5), spread
    # 0.075 -> 0.483; "known" p 0.8 (margin 0.4), consistent, no spread -> 0.133
    assert selection == {"budget": 2, "selected": 2, "labelled_pairs": 2, "reward_model": None,
                         "ranking": ["unknown", "known"]}


def test_record_signals_fall_back_to_the_pairs_own_label_and_break_ties_by_objective_order():
    from cai.judge.record import JudgeRecord

    judgements = _judged(p1=(0.9, 0.7), p2=(0.6, 0.4))
    # no objective has a label: the record's own p (0.7: margin 0.6), consistency (0.5) and the reward model
    # (|0.2 - 0.7| = 0.5); its principles are not read there
    none_labelled = JudgeRecord(id="n", status="ok", p_first=0.7, position_consistency=0.5, judgements=judgements,
                                objectives={"harmless": {"p_first": None}, "helpful": {"p_first": None}})
    assert review.record_signals(none_labelled, 0.2) == pytest.approx(
        {"margin": 0.6, "position": 0.5, "reward_model": 0.5})
    # two objectives equally doubtful (0.25 each: margin 0.5 + position 0, margin 0 + position 0.5): the first
    tie = JudgeRecord(id="t", status="ok", p_first=0.75, judgements=judgements, objectives={
        "harmless": {"p_first": 0.75, "position_consistency": 1.0, "principle_ids": []},
        "helpful": {"p_first": 1.0, "position_consistency": 0.5, "principle_ids": []}})
    assert review.record_signals(tie) == pytest.approx({"margin": 0.5, "position": 0.0})


class LengthScorer:
    """Unit-test stand-in for a `cai train rm` scorer (pure logic): a response's reward is its length in words."""

    def __init__(self, path):
        self.path = path
        self.calls = []

    def score(self, prompts, responses):
        self.calls.append((prompts, responses))
        return [float(len(text.split())) for text in responses]


def test_the_reward_model_reading_is_sigmoid_of_the_reward_difference_and_enters_the_ranking(tmp_path, monkeypatch):
    import cai.train.scoring

    made = []
    monkeypatch.setattr(cai.train.scoring, "make_scorer", lambda path: made.append(LengthScorer(path)) or made[-1])
    short_first = record("a", 0, {"p1": (0.8, 0.8), "p2": (0.8, 0.8)}, first="no", second="yes you can do it")
    long_first = record("b", 1, {"p1": (0.8, 0.8), "p2": (0.8, 0.8)}, first="one two three", second="one")
    run = judge_run(tmp_path, [short_first, long_first])
    review.select(run, 2, reward_model="rm-folder")
    assert [s.path for s in made] == ["rm-folder"]
    prompts, responses = made[0].calls[0]
    assert responses == ["no", "yes you can do it", "one two three", "one"] and len(prompts) == 4
    assert prompts[0] == prompts[1] == short_first["prompt"]
    queue = {row["pair_id"]: row for row in map(json.loads, (run / "review" / "queue.jsonl").read_text().splitlines())}
    # a: sigma(1 - 5) = 0.01799 against the judge's 0.8 -> 0.78201; b: sigma(3 - 1) = 0.88080 -> 0.08080
    assert queue["a"]["signals"]["reward_model"] == pytest.approx(0.8 - 1 / (1 + math.exp(4)))
    assert queue["b"]["signals"]["reward_model"] == pytest.approx(1 / (1 + math.exp(-2)) - 0.8)
    assert json.loads((run / "review" / "selection.json").read_text())["ranking"] == ["a", "b"]
    made.clear()
    review.select(run, 2)  # no reward model: none is loaded and no pair has the signal
    assert made == [] and all("reward_model" not in row["signals"] for row in map(
        json.loads, (run / "review" / "queue.jsonl").read_text().splitlines()))
