"""Human labels you can trust (issue 25): a label sticks to what the person saw, merge keeps out what it cannot
vouch for, a person's answer replaces every AI label of the pair, one writer per run, labels.jsonl has the run
store's guarantees, and the server's checks hold. Each test here was written to fail without its check (see
tests/README.md)."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import httpx
import pytest

from cai.review import review
from tests.processes import run as run_command
from tests.test_review import answer, judge_run, record, write_labels


def queued_run(tmp_path: Path, records: list[dict] | None = None, **config) -> Path:
    records = records or [record("a", 0, {"p1": (0.6, 0.4), "p2": (0.55, 0.45)}),
                          record("b", 1, {"p1": (0.7, 0.7), "p2": (0.6, 0.4)}),
                          record("c", 2, {"p1": (0.9, 0.9), "p2": (0.8, 0.8)})]
    run = judge_run(tmp_path, records, **config)
    review.select(run, len(records))
    return run


def rows(run: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (run / "export" / "train.jsonl").read_text().splitlines())}


# --- 1. a label sticks to what was shown ------------------------------------------------------------------------
def test_a_label_for_a_pair_whose_content_changed_is_stale_and_kept_out(tmp_path):
    run = queued_run(tmp_path)
    records = {r["id"]: r for r in map(json.loads, (run / "records.jsonl").read_text().splitlines())}
    write_labels(run, [answer(run, records["a"], "B"), answer(run, records["b"], "A")])
    # the pair is edited and judged again under the same id: the newer record of "a" holds other text
    edited = {**records["a"], "second": "a different response the person never saw"}
    with open(run / "records.jsonl", "a") as f:
        f.write(json.dumps(edited) + "\n")
    result = review.merge(run)
    merged = rows(run)
    assert merged["a"]["label_source"] == "ai" and merged["b"]["label_source"] == "human"
    assert result["reviewed"] == 1 and result["left_out"]["stale"] == 1
    assert "1 stale" in (run / "export" / "README.md").read_text()
    assert json.loads((run / "export" / "stats.json").read_text())["review_left_out"]["stale"] == 1


def test_merge_keeps_out_unknown_ids_other_runs_bad_values_and_malformed_rows(tmp_path):
    run = queued_run(tmp_path, [record("a", 0, {"p1": (0.6, 0.4)}), record("b", 1, {"p1": (0.7, 0.7)})])
    by_id = {r["id"]: r for r in map(json.loads, (run / "records.jsonl").read_text().splitlines())}
    stranger = {**by_id["a"], "id": "zzz"}
    labels = [answer(run, stranger, "A"),                                  # never queued
              {**answer(run, by_id["a"], "A"), "run_id": "another-run"},   # from another run's labels file
              {**answer(run, by_id["a"], "A"), "order": "XY"},              # read as reversed before
              {**answer(run, by_id["a"], "a")},                             # read as a skip before
              {"pair_id": "a", "run_id": answer(run, by_id["a"], "A")["run_id"], "choice": "A"},  # no digest, order
              {"choice": "A"}, [1, 2],                                      # no pair id; not an object
              answer(run, by_id["b"], "B")]                                 # the one good label
    write_labels(run, labels)
    result = review.merge(run)
    assert result["left_out"] == {"stale": 0, "not_queued": 1, "other_run": 1, "bad_values": 2, "malformed": 3}
    merged = rows(run)
    assert merged["a"]["label_source"] == "ai" and merged["b"]["label_source"] == "human"
    assert merged["b"]["p_chosen"] == 1.0 and merged["b"]["chosen"][0]["content"] == "sure, here is how"


def test_a_fifo_in_place_of_the_labels_file_is_a_one_line_error(tmp_path):
    run = queued_run(tmp_path)
    os.mkfifo(run / "review" / "labels.jsonl")
    done = run_command([sys.executable, "-m", "cai", "review", "merge", str(run)], timeout=60)
    assert done.returncode == 2 and "FIFO" in done.stderr and "Traceback" not in done.stderr


# --- 2. a person's answer replaces every AI label of the pair ---------------------------------------------------
def objective_record(pid: str, index: int, p_harmless: float, p_helpful: float) -> dict:
    base = record(pid, index, {"h1": (p_harmless, p_harmless), "u1": (p_helpful, p_helpful)})
    base.update(p_first=p_harmless, objectives={
        "harmless": {"p_first": p_harmless, "position_consistency": 1.0, "valid": True, "principle_ids": ["h1"]},
        "helpful": {"p_first": p_helpful, "position_consistency": 1.0, "valid": True, "principle_ids": ["u1"]}},
        unsafe_first=0.2, unsafe_second=0.7)
    return base


def test_human_answers_replace_each_objective_and_the_harm_answers(tmp_path):
    from cai.train.data import objective_rows, preference_rows

    records = [objective_record("a", 0, 0.3, 0.8), objective_record("b", 1, 0.6, 0.4)]
    run = queued_run(tmp_path, records, objectives=["harmless", "helpful"])
    queue = [json.loads(line) for line in (run / "review" / "queue.jsonl").read_text().splitlines()]
    assert [o["name"] for o in queue[0]["objectives"]] == ["harmless", "helpful"]  # the page asks both
    # shown BA: the first response is B. The person: first is less harmful, second more helpful, B (first) safe
    label = answer(run, records[0], "B", "BA", objectives={"harmless": "B", "helpful": "A"},
                   unsafe={"A": True, "B": False})
    write_labels(run, [label])
    review.merge(run)
    merged = preference_rows(str(run), "train", "rm")
    a = next(r for r in merged if r["id"] == "a")
    assert a["label_source"] == "human" and a["chosen"][0]["content"] == "sorry, I cannot"  # the first response
    assert a["p_harmless"] == 1.0 and a["p_helpful"] == 0.0  # the AI said 0.3 and 0.8: both overturned
    assert (a["unsafe_chosen"], a["unsafe_rejected"]) == (0.0, 1.0)
    # what `cai train rm --objective helpful` and `cai train cost` (harmless) read
    helpful = next(r for r in objective_rows(merged, "helpful") if r["id"] == "a")
    assert helpful["chosen"][0]["content"] == "sure, here is how" and helpful["p_chosen"] == 1.0
    harmless = next(r for r in objective_rows(merged, "harmless") if r["id"] == "a")
    assert harmless["chosen"][0]["content"] == "sorry, I cannot" and harmless["unsafe_rejected"] == 1.0


def test_objective_doubt_is_read_per_objective_not_across_them():
    # each objective confident and self-consistent, but they disagree with each other (a refusal of a harmful
    # request: less harmful, less helpful): no doubt; mixed together the principles spread would be 0.9
    r = objective_record("a", 0, 0.95, 0.05)
    from cai.judge.record import JudgeRecord

    signals = review.record_signals(JudgeRecord.parse({"status": "ok", **r}))
    assert signals["principles" if "principles" in signals else "margin"] == pytest.approx(0.1)
    assert review.doubt(signals) < 0.1
    mixed = review.doubt_signals(r["p_first"], r["position_consistency"], review.principle_means(r["judgements"]))
    assert mixed["principles"] == pytest.approx(0.9)


# --- 3. one writer, and the labels file's guarantees -------------------------------------------------------------
@pytest.fixture
def server(tmp_path):
    from cai.review.server import serve

    run = queued_run(tmp_path)
    started: dict = {}
    ready = threading.Event()

    def on_ready(url, srv):
        started.update(url=url, server=srv)
        ready.set()

    thread = threading.Thread(target=serve, args=(run,), kwargs={"open_browser": False, "ready": on_ready},
                              daemon=True)
    thread.start()
    assert ready.wait(30)
    base, token = started["url"].split("/?token=")
    yield run, base, token
    started["server"].shutdown()
    thread.join(10)


def test_a_second_server_on_the_same_run_is_refused(server):
    from cai.review.server import serve
    from cai.runs.store import FolderInUseError

    run, _, _ = server
    with pytest.raises(FolderInUseError, match="in use by pid"):
        serve(run, open_browser=False)
    done = run_command([sys.executable, "-m", "cai", "review", "serve", str(run), "--no-open"], timeout=60)
    assert done.returncode == 2 and "in use by pid" in done.stderr and "Traceback" not in done.stderr


def test_a_torn_last_label_is_cut_before_the_next_one_is_appended(tmp_path):
    from cai.review.server import ReviewState

    run = queued_run(tmp_path)
    records = {r["id"]: r for r in map(json.loads, (run / "records.jsonl").read_text().splitlines())}
    good = json.dumps(answer(run, records["a"], "A")) + "\n"
    (run / "review" / "labels.jsonl").write_text(good + '{"pair_id": "b", "choi')  # a crash mid-write
    state = ReviewState(run)
    item = state.next_for("t")["item"]
    assert state.label("t", {"pair_id": item["pair_id"], "choice": "B", "order": item["order"]})[0] == 200
    lines = (run / "review" / "labels.jsonl").read_text().splitlines()
    assert lines[0] == good.strip() and len(lines) == 2 and all(json.loads(line) for line in lines)
    state.log.close()


def test_a_labelled_pair_is_refused_a_second_label_and_a_wrong_order_is_refused(server):
    run, base, token = server
    item = httpx.get(f"{base}/api/next?token={token}&client=t1").json()["item"]
    wrong = "BA" if item["order"] == "AB" else "AB"
    bad = httpx.post(f"{base}/api/label?token={token}",
                     json={"client": "t1", "pair_id": item["pair_id"], "choice": "A", "order": wrong})
    assert bad.status_code == 400
    ok = httpx.post(f"{base}/api/label?token={token}",
                    json={"client": "t1", "pair_id": item["pair_id"], "choice": "A", "order": item["order"]})
    assert ok.status_code == 200
    again = httpx.post(f"{base}/api/label?token={token}",
                       json={"client": "t1", "pair_id": item["pair_id"], "choice": "B", "order": item["order"]})
    assert again.status_code == 409
    saved = [json.loads(line) for line in (run / "review" / "labels.jsonl").read_text().splitlines()]
    assert [s["choice"] for s in saved] == ["A"] and saved[0]["shown_sha"] and saved[0]["content_sha"]
    undo = httpx.post(f"{base}/api/undo?token={token}", json={"client": "t1"})
    assert undo.status_code == 200
    last = json.loads((run / "review" / "labels.jsonl").read_text().splitlines()[-1])
    assert last["undo"] is True and last["run_id"] == saved[0]["run_id"]  # an undo is a record of this run


# --- 4. the server -----------------------------------------------------------------------------------------------
def raw_post(base: str, token: str, headers: dict, body: bytes = b"") -> int:
    """A POST with exactly these headers (httpx would fix a bad Content-Length)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    request = (f"POST /api/label?token={token} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(request)
        reply = s.recv(200).decode()
    return int(reply.split()[1])


def test_bodies_are_capped_for_any_length_header(server):
    _, base, token = server
    assert raw_post(base, token, {"Content-Length": "-1"}) == 400
    assert raw_post(base, token, {"Content-Length": "1e9"}) == 400
    assert raw_post(base, token, {}) == 411
    assert raw_post(base, token, {"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n0\r\n\r\n") == 411
    assert raw_post(base, token, {"Content-Length": str(10**9)}) == 413


def test_reads_need_the_token_or_the_session_and_this_servers_host(server):
    _, base, token = server
    assert httpx.get(f"{base}/api/next").status_code == 403
    assert httpx.get(f"{base}/api/next?token=wrong").status_code == 403
    port = base.rsplit(":", 1)[1]
    assert httpx.get(f"{base}/api/next?token={token}", headers={"Host": f"10.0.0.5:{port}"}).status_code == 403
    assert httpx.get(f"{base}/api/next?token={token}").status_code == 200


def test_the_browser_gets_a_one_time_code_not_the_token(tmp_path, monkeypatch):
    import webbrowser

    from cai.review.server import serve

    run = queued_run(tmp_path)
    opened, started, ready = [], {}, threading.Event()
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url))

    def on_ready(url, srv):
        started.update(url=url, server=srv)
        ready.set()

    thread = threading.Thread(target=serve, args=(run,), kwargs={"open_browser": True, "ready": on_ready},
                              daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        token = started["url"].split("token=")[1]
        assert len(opened) == 1 and token not in opened[0] and "/login?code=" in opened[0]
        login = httpx.get(opened[0], follow_redirects=False)
        assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
        cookie = login.headers["set-cookie"].split(";")[0]
        base = started["url"].split("/?")[0]
        assert httpx.get(f"{base}/api/next", headers={"Cookie": cookie}).status_code == 200
        assert httpx.get(opened[0], follow_redirects=False).status_code == 403  # used once, then dead
        assert httpx.get(f"{base}/api/next", headers={"Cookie": "cai_review=forged"}).status_code == 403
    finally:
        started["server"].shutdown()
        thread.join(10)


@pytest.mark.parametrize("host, allow, message", [
    ("0.0.0.0", True, "every interface is refused"), ("::", True, "every interface is refused"),
    ("192.168.1.20", False, "--allow-remote"), ("not-an-address", False, "give an IP address"),
])
def test_bad_or_remote_hosts_are_one_line_errors(host, allow, message):
    from cai.errors import UsageError
    from cai.review.server import check_address

    with pytest.raises(UsageError, match=message):
        check_address(host, 0, allow)
    assert check_address("192.168.1.20", 0, True) is False and check_address("127.0.0.1", 0, False) is True


@pytest.mark.parametrize("args, message", [
    (["serve", "RUN", "--host", "::", "--no-open"], "every interface is refused"),
    (["serve", "RUN", "--port", "99999", "--no-open"], "--port 99999"),
    (["select", "RUN", "--budget", "nan"], "--budget must be a positive fraction"),
    (["select", "RUN", "--budget", "-3"], "--budget must be a positive fraction"),
    (["select", "GENERATE", "--budget", "2"], "is a `cai generate` run"),
])
def test_bad_review_options_are_one_line_errors(args, message, tmp_path):
    run = queued_run(tmp_path)
    generate = tmp_path / "gen"
    generate.mkdir()
    (generate / "manifest.json").write_text(json.dumps({"kind": "generate"}))
    args = [{"RUN": str(run), "GENERATE": str(generate)}.get(a, a) for a in args]
    done = run_command([sys.executable, "-m", "cai", "review", *args], timeout=60)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    import socket

    run = queued_run(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_command([sys.executable, "-m", "cai", "review", "serve", str(run), "--port", str(port),
                            "--no-open"], timeout=60)
    assert done.returncode == 2 and "cannot listen on" in done.stderr and "Traceback" not in done.stderr


def test_pairs_held_by_another_tab_are_reported_not_called_done(server):
    run, base, token = server
    held = [httpx.get(f"{base}/api/next?token={token}&client=tab1").json()["item"]["pair_id"] for _ in range(1)]
    for _ in range(2):  # tab2 labels the other two
        item = httpx.get(f"{base}/api/next?token={token}&client=tab2").json()["item"]
        assert item["pair_id"] not in held
        assert httpx.post(f"{base}/api/label?token={token}", json={"client": "tab2", "pair_id": item["pair_id"],
                                                                   "choice": "A", "order": item["order"]}).status_code == 200
    state = httpx.get(f"{base}/api/next?token={token}&client=tab2").json()
    assert state["item"] is None and state["progress"] == {"done": 2, "total": 3, "held_elsewhere": 1}


def test_the_ai_label_is_turned_with_the_order_shown(tmp_path):
    from cai.review.server import ReviewState

    run = queued_run(tmp_path, [record("a", 0, {"p1": (0.9, 0.7), "p2": (0.8, 0.8)})])  # p_first 0.8
    seen = {}
    for seed in range(12):  # both orders turn up
        state = ReviewState(run, show_ai_label=True, seed=seed)
        item = state.next_for("t")["item"]
        seen[item["order"]] = item["ai_p_a"]
        state.log.close()
    assert seen["AB"] == pytest.approx(0.8) and seen["BA"] == pytest.approx(0.2)


# --- 5. the simulation counts only what select would queue ------------------------------------------------------
def test_simulation_ranks_only_valid_labels_and_reports_invalid_ones_apart(tmp_path):
    import asyncio
    import math

    from cai.engines import Completion, Engine, TokenLogprob

    class RightButSometimesSilent(Engine):
        """Right at 0.8 on every pair, except q8 and q9, where it answers off the options (invalid)."""

        model_id = "scripted"

        async def generate(self, messages, sampling, *, continue_final=False):
            question = messages[-2]["content"]
            if "q8?" in question or "q9?" in question:
                top = [TokenLogprob("?", math.log(0.9)), TokenLogprob("!", math.log(0.1))]
            else:
                gold_is_a = question.index("(A)") < question.index("GOLD") < question.index("(B)")
                p_a = 0.8 if gold_is_a else 0.2
                top = [TokenLogprob("A", math.log(p_a)), TokenLogprob("B", math.log(1 - p_a))]
            return Completion(text="A", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])

    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"q{i}?", "chosen": "GOLD", "rejected": "plain"})
                            + "\n" for i in range(10)))
    result = asyncio.run(review.simulate(RightButSometimesSilent(), str(path), [0.2], judge_format="pairwise"))
    # 8 valid labels, all right: nothing for a person to fix (the old count: 0.9 -> 1.0 "fixed" the invalid two)
    assert result["invalid"] == 2 and result["pairs"] == 8
    assert result["ai_only"] == 1.0 and result["targeted"]["0.2"] == 1.0
    assert result["random_ci95"]["0.2"] == [1.0, 1.0]


def test_the_contrast_is_not_a_principle_in_the_principles_spread():
    # two yes/no questions agree at 0.9 in both orders; the contrast's p (a per-token likelihood difference through
    # a sigmoid, near 0.5 by scale, not a judge's answer) must not read as a principle disagreeing with them: with
    # it the spread would be min(1, 2 * std(0.9, 0.9, 0.52)) = 0.358
    judgements = [{"principle_id": q, "order": o, "valid": True, "p_first": 0.9, "format": "pointwise"}
                  for q in ("harmful", "specific") for o in ("AB", "BA")]
    judgements += [{"principle_id": "contrast", "order": o, "valid": True, "p_first": 0.52, "format": "contrast"}
                   for o in ("AB", "BA")]
    assert review.principle_means(judgements) == [0.9, 0.9]
    assert review.doubt_signals(0.9, 1.0, review.principle_means(judgements))["principles"] == 0.0
