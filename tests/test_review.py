"""Targeted human review (issue 15): the doubt ranking and the merge arithmetic by hand, `simulate` with a scripted
judge whose accuracies are worked out by hand, and the labelling page in real headless Chromium (keyboard labels,
reload and continue, undo, two tabs, writes without the token refused, model text shown as text)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path

import httpx
import pytest

from cai.engines import Completion, Engine, TokenLogprob
from cai.judge.record import JudgeRecord
from cai.review import review
from tests.conftest import chromium

CONSTITUTION = ("name: t\nprinciples:\n  - id: c\n    critique_request: Is it harmful?\n    revision_request: Fix it.\n"
                "preference_principles:\n  - id: p1\n    question: Which is less harmful?\n"
                "  - id: p2\n    question: Which is more honest?\n")
XSS_SCRIPT = "<script>window.pwned = 1</script>"
XSS_IMG = '<img src=x onerror="window.pwned = 2">'


def judgements(per_principle: dict[str, tuple[float, float]]) -> list[dict]:
    return [{"principle_id": pid, "order": order, "valid": True, "p_first": p}
            for pid, (ab, ba) in per_principle.items() for order, p in (("AB", ab), ("BA", ba))]


def judge_run(tmp_path: Path, records: list[dict], **config) -> Path:
    run = tmp_path / "judge-run"
    run.mkdir()
    settings = {"min_confidence": 0.5, "drop_inconsistent": False, "principles_per_pair": 2,
                "engine": {"model": "judge"}, **config}
    (run / "manifest.json").write_text(json.dumps({"kind": "judge", "config": settings, "engine": {"model": "judge"},
                                                   "constitution": {"text": CONSTITUTION}}))
    base = {"status": "ok", "meta": {"first": "revision", "second": "initial"}, "principle_ids": ["p1", "p2"],
            "n_valid": 4}
    (run / "records.jsonl").write_text("".join(json.dumps({**base, **r}) + "\n" for r in records))
    return run


def record(pid: str, index: int, per_principle: dict[str, tuple[float, float]], first="sorry, I cannot",
           second="sure, here is how") -> dict:
    means = [(ab + ba) / 2 for ab, ba in per_principle.values()]
    consistent = [(ab > 0.5) == (ba > 0.5) for ab, ba in per_principle.values()]
    return {"id": pid, "index": index, "prompt": [{"role": "user", "content": f"question {pid}"}], "first": first,
            "second": second, "p_first": sum(means) / len(means),
            "position_consistency": sum(consistent) / len(consistent), "judgements": judgements(per_principle)}


# --- the ranking ---------------------------------------------------------------------------------------------------------
def test_doubt_signals_by_hand():
    # p = 0.7: margin 1 - 2(0.2) = 0.6; consistency 0.5: position 0.5; principles 0.9 and 0.5: std 0.2 -> 0.4
    signals = review.doubt_signals(0.7, 0.5, [0.9, 0.5])
    assert signals == pytest.approx({"margin": 0.6, "position": 0.5, "principles": 0.4})
    assert review.doubt(signals) == pytest.approx(0.5)
    # a reward model saying sigma(delta) = 0.2 against the judge's 0.7 adds |0.2 - 0.7| = 0.5
    assert review.doubt_signals(0.7, None, [], 0.2) == pytest.approx({"margin": 0.6, "reward_model": 0.5})
    assert review.reason({"margin": 0.6, "position": 0.1}) == "margin 0.60"


def test_ranking_puts_the_doubtful_first_and_select_writes_the_queue(tmp_path):
    sure = record("sure", 0, {"p1": (0.95, 0.95), "p2": (0.9, 0.9)})          # margin 0.15, position 0, spread 0.05
    flip = record("flip", 1, {"p1": (0.9, 0.2), "p2": (0.8, 0.3)})            # orders disagree
    split = record("split", 2, {"p1": (0.9, 0.9), "p2": (0.2, 0.2)})          # principles disagree
    run = judge_run(tmp_path, [sure, flip, split])
    ranked = review.rank([JudgeRecord.parse({"status": "ok", **r}) for r in (sure, flip, split)])
    assert [r["pair_id"] for r in ranked] == ["flip", "split", "sure"]
    # flip: p = 0.55 -> margin 0.9, position 1.0, spread |0.55 - 0.55| = 0 -> doubt 1.9 / 3
    assert ranked[0]["doubt"] == pytest.approx(1.9 / 3, abs=1e-6)
    out = review.select(run, 2)
    queue = [json.loads(line) for line in Path(out["queue"]).read_text().splitlines()]
    assert [q["pair_id"] for q in queue] == ["flip", "split"] and [q["rank"] for q in queue] == [1, 2]
    assert queue[0]["questions"] == ["Which is less harmful?", "Which is more honest?"]
    assert "position 1.00" in queue[0]["reason"]
    assert review.select(run, 0.34)["selected"] == 1  # a fraction: round(0.34 x 3) = 1


# --- merging a person's labels -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("choice, order, expected", [("A", "AB", 1.0), ("A", "BA", 0.0), ("B", "AB", 0.0),
                                                     ("B", "BA", 1.0), ("tie", "AB", 0.5), ("skip", "BA", None)])
def test_a_human_answer_maps_to_the_first_response(choice, order, expected):
    assert review.human_p_first({"choice": choice, "order": order}) == expected


def answer(run: Path, record: dict, choice: str | None = None, order: str = "AB", **extra) -> dict:
    """A label as `cai review serve` writes it for `record` shown in `order` (undo when choice is None)."""
    from cai.review.labels import pair_digest, run_id, shown_digest, shown_from

    if choice is None:
        return {"pair_id": record["id"], "run_id": run_id(run), "undo": True, "client": "x"}
    a, b = shown_from(record["prompt"], record["first"], record["second"], order)
    return {"pair_id": record["id"], "run_id": run_id(run), "choice": choice, "order": order, "client": "x",
            "content_sha": pair_digest(record["prompt"], record["first"], record["second"]),
            "shown_sha": shown_digest(record["prompt"], a, b, order), **extra}


def write_labels(run: Path, labels: list[dict]) -> None:
    (run / "review" / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))


def test_merge_overrides_ai_labels_and_records_the_review(tmp_path):
    records = [record("a", 0, {"p1": (0.9, 0.7), "p2": (0.8, 0.8)}),   # AI: first wins at 0.8
               record("b", 1, {"p1": (0.6, 0.4), "p2": (0.55, 0.45)}),  # AI: exactly 0.5
               record("c", 2, {"p1": (0.7, 0.3), "p2": (0.6, 0.4)}),    # AI: 0.5, unreviewed
               record("d", 3, {"p1": (0.95, 0.95), "p2": (0.9, 0.9)})]  # AI: 0.925, never selected
    run = judge_run(tmp_path, records)
    review.select(run, 3)
    by_id = {r["id"]: r for r in records}
    labels = [answer(run, by_id["a"], "A", "BA"),    # the second response is shown as A: it wins
              answer(run, by_id["b"], "tie"),
              answer(run, by_id["c"], "skip"),
              answer(run, by_id["c"], "B"),
              answer(run, by_id["c"])]                # c: answered, then undone
    write_labels(run, labels)
    result = review.merge(run, drop_unreviewed_below=0.75)
    rows = {r["id"]: r for r in map(json.loads, (run / "export" / "train.jsonl").read_text().splitlines())}
    a = rows["a"]
    assert a["label_source"] == "human" and a["p_chosen"] == 1.0 and not a["tie"]
    assert a["chosen"][0]["content"] == "sure, here is how"  # the person overturned the AI's choice
    assert rows["b"]["label_source"] == "human" and rows["b"]["tie"] and rows["b"]["p_chosen"] == 0.5
    assert rows["d"]["label_source"] == "ai" and rows["d"]["p_chosen"] == pytest.approx(0.925)
    # ranking: c and b (doubt highest), then a, then d; the least-trusted 75% is round(3) = 3 pairs: c, b, a;
    # of those only c is unreviewed (its answer was undone), so c is dropped
    assert "c" not in rows and sorted(rows) == ["a", "b", "d"]
    assert result["reviewed"] == 2 and result["skipped"] == 0
    card = (run / "export" / "README.md").read_text()
    assert "2 pairs labelled by a person" in card and "budget 3" in card and "1 unreviewed pairs" in card
    stats = json.loads((run / "export" / "stats.json").read_text())
    assert stats["human_labels"] == 2 and stats["dropped_unreviewed"] == 1


# --- simulate --------------------------------------------------------------------------------------------------------------
class GoldJudge(Engine):
    """Scripted: for the pair whose prompt says `qN`, puts probability P[N] on the option holding GOLD."""

    model_id = "scripted"
    P = {"q0": 0.9, "q1": 0.4, "q2": 0.45, "q3": 0.3, "q4": 0.8}

    async def generate(self, messages, sampling, *, continue_final=False):
        question = messages[-2]["content"]
        p_gold = next(p for q, p in self.P.items() if f"{q}?" in question)
        gold_is_a = question.index("(A)") < question.index("GOLD") < question.index("(B)")
        p_a = p_gold if gold_is_a else 1 - p_gold
        top = [TokenLogprob("A", math.log(p_a)), TokenLogprob("B", math.log(1 - p_a))]
        return Completion(text="A", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])


def test_simulate_with_a_scripted_judge_by_hand(tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps({"id": q, "prompt": f"{q}?", "chosen": "GOLD answer", "rejected": "plain answer"})
                            + "\n" for q in GoldJudge.P))
    result = asyncio.run(review.simulate(GoldJudge(), str(path), [0.4, 0.6], judge_format="pairwise"))
    # right where P[gold] > 0.5: q0 and q4 -> 2 of 5
    assert result["ai_only"] == pytest.approx(0.4)
    # both orders agree and both principles give the same p, so doubt = margin / 3 with margin 1 - 2|p - 0.5|:
    # q2 0.9, q1 0.8, q3 0.6, q4 0.4, q0 0.2. Budget 0.4 = 2 pairs: q2, q1 fixed -> 4 of 5; 0.6 = 3: all 5
    assert result["targeted"] == pytest.approx({"0.4": 0.8, "0.6": 1.0})
    # at random, 2 of 5 replaced fix 2 x 3/5 = 1.2 wrong ones on average: (2 + 1.2) / 5 = 0.64 expected
    assert result["random"]["0.4"] == pytest.approx(0.64, abs=0.08)
    assert result["targeted"]["0.4"] > result["random"]["0.4"]
    review.plot_simulation(result, tmp_path / "sim.png")
    assert (tmp_path / "sim.png").stat().st_size > 5000


# --- the page, in real Chromium ------------------------------------------------------------------------------------------------
@pytest.fixture
def served(tmp_path):
    from cai.review.server import serve

    # doubts (margin, position, principles): r0 (1, 1, 0), r1 (0.8, 0.5, 0.2), r2 (0.3, 0, 0.1): queued in that order
    records = [record("r0", 0, {"p1": (0.6, 0.4), "p2": (0.55, 0.45)}),
               record("r1", 1, {"p1": (0.7, 0.7), "p2": (0.6, 0.4)}),
               record("r2", 2, {"p1": (0.9, 0.9), "p2": (0.8, 0.8)})]
    records[0]["second"] = f"{XSS_SCRIPT} and {XSS_IMG}"
    run = judge_run(tmp_path, records)
    review.select(run, 3)
    started: dict = {}
    ready = threading.Event()

    def on_ready(url, server):
        started.update(url=url, server=server)
        ready.set()

    thread = threading.Thread(target=serve, args=(run,), kwargs={"open_browser": False, "ready": on_ready},
                              daemon=True)
    thread.start()
    assert ready.wait(30)

    def stop():
        if thread.is_alive():
            started["server"].shutdown()
            thread.join(10)

    yield Served((run, started["url"]), stop=stop)
    stop()


class Served(tuple):
    """(run, url), and `stop()` to shut the server down (its lock released) inside a test."""

    def __new__(cls, values, stop):
        made = super().__new__(cls, values)
        made.stop = stop
        return made


def labels_on_disk(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "review" / "labels.jsonl").read_text().splitlines()]


def test_writes_need_the_token_and_two_tabs_never_get_one_pair(served):
    run, url = served
    base, token = url.split("/?token=")
    assert httpx.post(f"{base}/api/label", json={"pair_id": "r0", "choice": "A", "order": "AB"}).status_code == 403
    assert httpx.post(f"{base}/api/label?token=wrong", json={}).status_code == 403
    assert httpx.get(f"{base}/api/next?token={token}", headers={"Host": "evil.example:80"}).status_code == 403
    big = httpx.post(f"{base}/api/label?token={token}", content=b"x" * 5000,
                     headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    first = httpx.get(f"{base}/api/next?token={token}&client=tab1").json()["item"]
    second = httpx.get(f"{base}/api/next?token={token}&client=tab2").json()["item"]
    assert first["pair_id"] != second["pair_id"]
    stolen = httpx.post(f"{base}/api/label?token={token}", json={"client": "tab2", "pair_id": first["pair_id"],
                                                                  "choice": "A", "order": first["order"]})
    assert stolen.status_code == 409 and labels_on_disk(run) == []


def test_label_by_keyboard_reload_undo_and_text_stays_text(served):
    from playwright.sync_api import sync_playwright

    run, url = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-pair=r0]", state="attached")  # most doubtful first
        body = page.inner_text("body")
        assert XSS_SCRIPT in body and XSS_IMG in body  # shown as text
        assert page.evaluate("() => typeof window.pwned") == "undefined" and page.locator("img").count() == 0
        shown_order = page.get_attribute("body", "data-order")
        page.keyboard.press("a")
        page.wait_for_selector("body[data-pair=r1]", state="attached")
        saved = labels_on_disk(run)
        assert saved[-1]["pair_id"] == "r0" and saved[-1]["choice"] == "A" and saved[-1]["order"] == shown_order
        page.reload()  # continues where it stopped
        page.wait_for_selector("body[data-pair=r1]", state="attached")
        assert "1 of 3 labelled" in page.inner_text("#progress")
        page.keyboard.press("t")
        page.wait_for_selector("body[data-pair=r2]", state="attached")
        page.keyboard.press("u")  # undo the tie: r1 comes back
        page.wait_for_selector("body[data-pair=r1]", state="attached")
        page.keyboard.press("b")
        page.wait_for_selector("body[data-pair=r2]", state="attached")
        page.keyboard.press("s")
        page.wait_for_selector('body[data-pair=""]', state="attached")
        assert "3 of 3 labelled" in page.inner_text("#progress")
        browser.close()
    final = review.human_labels(run)
    assert {k: v["choice"] for k, v in final.items()} == {"r0": "A", "r1": "B", "r2": "skip"}
    assert [r.get("undo", False) for r in labels_on_disk(run)] == [False, False, True, False, False]


def test_abstained_labels_stay_out_of_train_jsonl_and_are_queued_first(tmp_path):
    from cai.judge.export import export_judge_run

    sure = record("sure", 0, {"p1": (0.95, 0.95), "p2": (0.9, 0.9)})
    doubtful = record("doubtful", 1, {"p1": (0.9, 0.2), "p2": (0.8, 0.3)})  # the most doubtful by the signals
    withheld = {**record("withheld", 2, {"p1": (0.6, 0.6), "p2": (0.6, 0.6)}), "abstain": True}
    run = judge_run(tmp_path, [sure, doubtful, withheld])
    export_judge_run(run)
    train = [json.loads(line) for line in (run / "export" / "train.jsonl").read_text().splitlines()]
    abstained = [json.loads(line) for line in (run / "export" / "abstained.jsonl").read_text().splitlines()]
    assert [r["id"] for r in train] == ["sure", "doubtful"] and not any(r["abstain"] for r in train)
    assert [r["id"] for r in abstained] == ["withheld"] and abstained[0]["abstain"] is True
    stats = json.loads((run / "export" / "stats.json").read_text())
    assert stats["kept"] == 2 and stats["abstained"] == 1
    assert "1 pair(s) the judge abstained on" in (run / "export" / "README.md").read_text()
    # queued first, ahead of the pair whose signals are more doubtful
    assert [r["pair_id"] for r in review.rank([JudgeRecord.parse({"status": "ok", **r}) for r in (sure, doubtful, withheld)])] == ["withheld", "doubtful", "sure"]
    from cai.train.data import preference_rows

    assert [r["id"] for r in preference_rows(str(run), "train", "dpo")] == ["sure", "doubtful"]
    assert [r["id"] for r in preference_rows(str(run), "train", "dpo", keep_abstained=True)] == \
        ["sure", "doubtful", "withheld"]


def test_two_tabs_a_stale_label_after_an_edit_and_a_second_server_in_chromium(served):
    from playwright.sync_api import sync_playwright

    from cai.review.server import serve
    from cai.runs.store import FolderInUseError

    run, url = served
    with pytest.raises(FolderInUseError, match="in use by pid"):  # one writer per run
        serve(run, open_browser=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        context = browser.new_context()
        one, two = context.new_page(), context.new_page()  # two tabs: each its own client
        one.goto(url)
        one.wait_for_selector("body[data-pair=r0]", state="attached")
        two.goto(url)
        two.wait_for_selector("body[data-pair=r1]", state="attached")  # r0 is held by the first tab
        two.keyboard.press("b")
        two.wait_for_selector("body[data-pair=r2]", state="attached")
        two.keyboard.press("a")
        two.wait_for_selector('body[data-pair=""]', state="attached")
        assert two.get_attribute("body", "data-held") == "1"  # not "all labelled": r0 is open in the other tab
        assert "still open in another tab" in two.inner_text("#conversation")
        one.keyboard.press("a")
        one.wait_for_selector('body[data-pair=""]', state="attached")
        assert one.get_attribute("body", "data-held") == "0" and "3 of 3 labelled" in one.inner_text("#progress")
        browser.close()
    # r1's second response is edited and judged again after the person labelled it: that label is stale
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    edited = {**next(r for r in records if r["id"] == "r1"), "second": "an answer nobody reviewed"}
    with open(run / "records.jsonl", "a") as f:
        f.write(json.dumps(edited) + "\n")
    served.stop()  # merge takes the run's lock, which the server holds while it runs
    result = review.merge(run)
    assert result["left_out"]["stale"] == 1 and result["reviewed"] == 2
    merged = {r["id"]: r["label_source"] for r in map(json.loads, (run / "export" / "train.jsonl").read_text().splitlines())}
    assert merged == {"r0": "human", "r1": "ai", "r2": "human"}
