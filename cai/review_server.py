"""`cai review serve RUN`: a local page where a person labels the review queue, one pair at a time.

    cai review serve outputs/<judge-run> [--host 127.0.0.1] [--port 0] [--no-open] [--show-ai-label]

The URL (with its random token) is the first line printed. The page (`prompts/review/page.html`: no CDN, no
network) shows the conversation, the two responses in a random order that is recorded, the principles' questions,
buttons A / B / Tie / Skip (keys a, b, t, s; u undoes) and progress. Every answer is appended to
RUN/review/labels.jsonl and flushed to disk before the reply, so the page only moves on once it is saved; reopening
continues where it stopped. A pair shown in one tab is claimed for it (10 minutes), so two tabs never label one
pair twice, and a second answer for a labelled pair is refused.

Security: loopback by default; every request needs the token (compared in constant time) and a Host header naming
this server (no DNS rebinding); bodies are bounded; nothing from a request reaches a file path; model text reaches
the page as JSON and is put in with `textContent`, never parsed as HTML.
"""

from __future__ import annotations

import hmac
import json
import os
import random
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cai.errors import UsageError
from cai.resources import data_dir
from cai.store import read_jsonl

MAX_BODY = 4096
CLAIM_SECONDS = 600.0
CHOICES = ("A", "B", "tie", "skip")


class ReviewState:
    """The queue, the labels on disk and the claims of open tabs; every method holds the lock."""

    def __init__(self, run: Path, show_ai_label: bool = False, seed: int | None = None):
        self.queue = list(read_jsonl(run / "review" / "queue.jsonl"))
        if not self.queue:
            raise UsageError(f"{run}: the review queue is empty; run `cai review select {run}` first")
        self.by_id = {row["pair_id"]: row for row in self.queue}
        self.path = run / "review" / "labels.jsonl"
        self.show_ai_label = show_ai_label
        self.rows = list(read_jsonl(self.path))
        self.claims: dict[str, tuple[str, float]] = {}
        self.orders: dict[str, str] = {}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def labelled(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            if row.get("undo"):
                done.pop(row["pair_id"], None)
            else:
                done[row["pair_id"]] = row
        return done

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)

    def _claimable(self, pair_id: str, client: str, now: float) -> bool:
        holder = self.claims.get(pair_id)
        return holder is None or holder[0] == client or holder[1] < now

    def next_for(self, client: str) -> dict[str, Any]:
        with self.lock:
            now, done = time.monotonic(), self.labelled()
            item = next((row for row in self.queue if row["pair_id"] not in done
                         and self.claims.get(row["pair_id"], ("", 0.0))[0] == client), None)
            item = item or next((row for row in self.queue if row["pair_id"] not in done
                                 and self._claimable(row["pair_id"], client, now)), None)
            progress = {"done": len(done), "total": len(self.queue)}
            if item is None:
                return {"item": None, "progress": progress}
            pair_id = item["pair_id"]
            self.claims[pair_id] = (client, now + CLAIM_SECONDS)
            order = self.orders.setdefault(pair_id, self.rng.choice(("AB", "BA")))
            a, b = (item["first"], item["second"]) if order == "AB" else (item["second"], item["first"])
            shown = {"pair_id": pair_id, "order": order, "prompt": item["prompt"], "response_a": a,
                     "response_b": b, "questions": item.get("questions", []), "rank": item.get("rank")}
            if self.show_ai_label:
                p_first = item["p_first"]
                shown["ai_p_a"] = p_first if order == "AB" else 1.0 - p_first
            return {"item": shown, "progress": progress}

    def label(self, client: str, pair_id: str, choice: str, order: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if pair_id not in self.by_id or choice not in CHOICES or order != self.orders.get(pair_id):
                return 400, {"error": "unknown pair, choice or order"}
            if pair_id in self.labelled():
                return 409, {"error": "this pair is already labelled"}
            if not self._claimable(pair_id, client, time.monotonic()):
                return 409, {"error": "this pair is being labelled in another tab"}
            self._append({"pair_id": pair_id, "choice": choice, "order": order, "client": client,
                          "shown_ai_label": self.show_ai_label, "time": time.time()})
            self.claims.pop(pair_id, None)
            return 200, {"saved": pair_id}

    def undo(self, client: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            done = self.labelled()
            mine = [row for row in self.rows if not row.get("undo") and row.get("client") == client
                    and done.get(row["pair_id"]) is row]
            if not mine:
                return 409, {"error": "nothing of this tab's to undo"}
            pair_id = mine[-1]["pair_id"]
            self._append({"pair_id": pair_id, "undo": True, "client": client, "time": time.time()})
            self.claims[pair_id] = (client, time.monotonic() + CLAIM_SECONDS)
            return 200, {"undone": pair_id}


class _Handler(BaseHTTPRequestHandler):
    """Replies, the token and Host checks; `make_handler` adds the routes."""

    server_version = "cai-review"
    token = ""
    hosts: set[str] = set()

    def log_message(self, *args: Any) -> None:  # quiet: the terminal shows the URL only
        pass

    def _reply(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                         "style-src 'unsafe-inline'; connect-src 'self'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._reply(status, json.dumps(data, ensure_ascii=False).encode())

    def _allowed(self) -> dict[str, list[str]] | None:
        query = parse_qs(urlsplit(self.path).query)
        given = (query.get("token") or [""])[0]
        if self.headers.get("Host") not in self.hosts or not hmac.compare_digest(given.encode(), self.token.encode()):
            self._json(403, {"error": "a valid token and host are required"})
            return None
        return query


def make_handler(state: ReviewState, token: str, hosts: set[str], page: bytes):
    class Handler(_Handler):
        def do_GET(self) -> None:
            query = self._allowed()
            if query is None:
                return
            route = urlsplit(self.path).path
            if route == "/":
                self._reply(200, page, "text/html; charset=utf-8")
            elif route == "/api/next":
                self._json(200, state.next_for((query.get("client") or ["?"])[0][:64]))
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self._allowed() is None:
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._json(413, {"error": f"request bodies are at most {MAX_BODY} bytes"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                client = str(body.get("client", "?"))[:64]
            except (ValueError, AttributeError):
                self._json(400, {"error": "expected a JSON object"})
                return
            route = urlsplit(self.path).path
            if route == "/api/label":
                status, data = state.label(client, str(body.get("pair_id")), str(body.get("choice")),
                                           str(body.get("order")))
            elif route == "/api/undo":
                status, data = state.undo(client)
            else:
                status, data = 404, {"error": "not found"}
            self._json(status, data)

    Handler.token, Handler.hosts = token, hosts
    return Handler


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 0, open_browser: bool = True,
          show_ai_label: bool = False, ready: Any = None) -> None:
    """Serve until interrupted; prints the URL first. `ready(url, server)` is called once it listens (tests)."""
    run = Path(run_dir)
    state = ReviewState(run, show_ai_label)
    token = secrets.token_urlsafe(24)
    page = (data_dir("prompts") / "review" / "page.html").read_bytes()
    server = ThreadingHTTPServer((host, port), None)
    bound = server.server_address[1]
    hosts = {f"{name}:{bound}" for name in (host, "127.0.0.1", "localhost", "[::1]")}
    server.RequestHandlerClass = make_handler(state, token, hosts, page)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{bound}/?token={token}"
    print(url, flush=True)
    print(f"cai review: {len(state.queue)} pairs queued, {len(state.labelled())} labelled; labels go to "
          f"{state.path}. Ctrl-C stops.", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    if ready is not None:
        ready(url, server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
