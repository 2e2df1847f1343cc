"""`cai review serve RUN`: a local page where a person labels the review queue, one pair at a time.

    cai review serve outputs/<judge-run> [--host 127.0.0.1] [--port 0] [--no-open] [--show-ai-label]

The first line printed is the page's URL with its token (copy it into a browser); the browser this command opens
gets a one-time code instead, exchanged for a session cookie on first use, so the token never appears in a
process's arguments. The page (`prompts/review/page.html`: no CDN, no network) shows the conversation, the two
responses in a random order that is recorded, the principles' questions (one per objective for an
`--objectives` run, with optional "is it harmful?" answers) and progress; keys a, b, t, s label, u undoes. Every
answer, with a digest of exactly what was shown, is appended to RUN/review/labels.jsonl and fsynced before the
page moves on (`cai/review_labels.py`). A pair shown in one tab is claimed for it (10 minutes): two tabs never
label one pair, and a page whose remaining pairs are open elsewhere says so.

Security: one server per run (the run folder's lock, the same the stages take); loopback by default, another
address only with `--allow-remote` and a loud warning; every request needs the session cookie or the token
(constant-time comparison) and a Host header naming the address the server is bound to; request bodies are
capped for any Content-Length, and chunked or length-less bodies are refused; model text reaches the page as
JSON and is put in with `textContent`, never parsed as HTML.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import random
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cai.errors import UsageError
from cai.resources import data_dir
from cai.review.labels import CHOICES, OBJECTIVE_CHOICES, ORDERS, latest, open_label_log, shown_digest
from cai.runs.store import read_jsonl

MAX_BODY = 4096
CLAIM_SECONDS = 600.0
COOKIE = "cai_review"


class ReviewState:
    """The queue, the labels on disk and the claims of open tabs; every method holds the lock."""

    def __init__(self, run: Path, show_ai_label: bool = False, seed: int | None = None):
        self.queue = list(read_jsonl(run / "review" / "queue.jsonl"))
        if not self.queue:
            raise UsageError(f"{run}: the review queue is empty; run `cai review select {run}` first")
        self.by_id = {row["pair_id"]: row for row in self.queue}
        self.log, self.rows = open_label_log(run)
        self.path = self.log.path
        self.show_ai_label = show_ai_label
        self.claims: dict[str, tuple[str, float]] = {}
        self.orders: dict[str, str] = {}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def labelled(self) -> dict[str, dict[str, Any]]:
        return latest(self.rows)

    def _append(self, row: dict[str, Any]) -> None:
        self.log.append(row)  # flushed and fsynced before the reply
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
            held = sum(1 for row in self.queue if row["pair_id"] not in done
                       and not self._claimable(row["pair_id"], client, now))
            progress = {"done": len(done), "total": len(self.queue), "held_elsewhere": held}
            if item is None:
                return {"item": None, "progress": progress}
            pair_id = item["pair_id"]
            self.claims[pair_id] = (client, now + CLAIM_SECONDS)
            order = self.orders.setdefault(pair_id, self.rng.choice(ORDERS))
            a, b = (item["first"], item["second"]) if order == "AB" else (item["second"], item["first"])
            shown = {"pair_id": pair_id, "order": order, "prompt": item["prompt"], "response_a": a,
                     "response_b": b, "questions": item.get("questions", []), "rank": item.get("rank"),
                     "objectives": item.get("objectives", [])}
            if self.show_ai_label:
                p_first = item["p_first"]
                shown["ai_p_a"] = p_first if order == "AB" else 1.0 - p_first
            return {"item": shown, "progress": progress}

    def label(self, client: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pair_id, choice, order = body.get("pair_id"), body.get("choice"), body.get("order")
        with self.lock:
            if not isinstance(pair_id, str) or pair_id not in self.by_id or choice not in CHOICES \
                    or order not in ORDERS or order != self.orders.get(pair_id):
                return 400, {"error": "unknown pair, choice or order"}
            item = self.by_id[pair_id]
            extra = _objective_answers(body, item, choice)
            if extra is None:
                return 400, {"error": "bad objective or harm answers"}
            if pair_id in self.labelled():
                return 409, {"error": "this pair is already labelled"}
            if not self._claimable(pair_id, client, time.monotonic()):
                return 409, {"error": "this pair is being labelled in another tab"}
            a, b = (item["first"], item["second"]) if order == "AB" else (item["second"], item["first"])
            self._append({"pair_id": pair_id, "run_id": item.get("run_id"), "content_sha": item.get("content_sha"),
                          "shown_sha": shown_digest(item["prompt"], a, b, order), "choice": choice, "order": order,
                          **extra, "client": client, "shown_ai_label": self.show_ai_label, "time": time.time()})
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
            self._append({"pair_id": pair_id, "run_id": self.by_id[pair_id].get("run_id"), "undo": True,
                          "client": client, "time": time.time()})
            self.claims[pair_id] = (client, time.monotonic() + CLAIM_SECONDS)
            return 200, {"undone": pair_id}


def _objective_answers(body: dict[str, Any], item: dict[str, Any], choice: str) -> dict[str, Any] | None:
    """The per-objective and harm answers of a label (validated), or None when they are malformed."""
    out: dict[str, Any] = {}
    names = [o["name"] for o in item.get("objectives", [])]
    given = body.get("objectives")
    if names and choice != "skip":
        if not isinstance(given, dict) or set(given) != set(names) or \
                any(v not in OBJECTIVE_CHOICES for v in given.values()):
            return None
        if given[names[0]] != choice:  # the main choice is the first objective's answer
            return None
        out["objectives"] = dict(given)
    elif given not in (None, {}):
        return None
    unsafe = body.get("unsafe")
    if unsafe not in (None, {}):
        if not isinstance(unsafe, dict) or set(unsafe) - {"A", "B"} or \
                any(v is not None and not isinstance(v, bool) for v in unsafe.values()):
            return None
        out["unsafe"] = {k: v for k, v in unsafe.items() if v is not None}
    return out


class _Handler(BaseHTTPRequestHandler):
    """Replies and the access checks; `make_handler` adds the routes."""

    server_version = "cai-review"
    protocol_version = "HTTP/1.0"
    token = ""
    hosts: set[str] = set()
    sessions: set[str] = set()

    def log_message(self, *args: Any) -> None:  # quiet: the terminal shows the URL only
        pass

    def _reply(self, status: int, body: bytes, kind: str = "application/json", headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            for name, value in {"Content-Type": kind, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; connect-src 'self'", **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client hung up (e.g. after an oversized body)
            self.close_connection = True

    def _json(self, status: int, data: dict[str, Any], headers: dict | None = None) -> None:
        self._reply(status, json.dumps(data, ensure_ascii=False).encode(), headers=headers)

    def _session(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and any(hmac.compare_digest(value.encode(), s.encode()) for s in self.sessions):
                return value
        return None

    def _allowed(self) -> dict[str, list[str]] | None:
        """The query when the Host names this server and the request has the session or the token; else 403."""
        query = parse_qs(urlsplit(self.path).query)
        given = (query.get("token") or [""])[0]
        host_ok = self.headers.get("Host") in self.hosts
        if not host_ok or not (self._session() or hmac.compare_digest(given.encode(), self.token.encode())):
            self._json(403, {"error": "a valid session or token and this server's host are required"})
            return None
        return query

    def _new_session(self) -> dict[str, str]:
        session = secrets.token_urlsafe(24)
        self.sessions.add(session)
        return {"Set-Cookie": f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/"}

    def _body(self) -> dict[str, Any] | None:
        """The JSON object of a POST, read only within the cap; every other shape is answered and None returned."""
        if self.headers.get("Transfer-Encoding"):
            self._json(411, {"error": "chunked bodies are not accepted; send a Content-Length"})
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._json(411, {"error": "a Content-Length is required"})
            return None
        try:
            length = int(raw.strip())
        except ValueError:
            length = -1
        if length < 0 or not raw.strip().isdigit():
            self._json(400, {"error": "Content-Length must be a whole number of bytes"})
            return None
        if length > MAX_BODY:
            self.close_connection = True  # the unread body would otherwise be parsed as the next request
            self._json(413, {"error": f"request bodies are at most {MAX_BODY} bytes"})
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            self._json(400, {"error": "expected a JSON object"})
            return None
        return body


def make_handler(state: ReviewState, token: str, hosts: set[str], page: bytes, codes: dict[str, float]):
    class Handler(_Handler):
        def do_GET(self) -> None:
            route = urlsplit(self.path).path
            if route == "/login":  # the browser this command opened: its one-time code for a session cookie
                code = (parse_qs(urlsplit(self.path).query).get("code") or [""])[0]
                if self.headers.get("Host") not in self.hosts or codes.pop(code, 0.0) < time.monotonic():
                    self._json(403, {"error": "this code was used or has expired; open the URL printed first"})
                    return
                self._reply(303, b"", "text/plain", {"Location": "/", **self._new_session()})
                return
            query = self._allowed()
            if query is None:
                return
            if route == "/":
                headers = self._new_session() if not self._session() else None
                self._reply(200, page, "text/html; charset=utf-8", headers)
            elif route == "/api/next":
                self._json(200, state.next_for((query.get("client") or ["?"])[0][:64]))
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self._allowed() is None:
                return
            body = self._body()
            if body is None:
                return
            client = str(body.get("client", "?"))[:64]
            route = urlsplit(self.path).path
            if route == "/api/label":
                status, data = state.label(client, body)
            elif route == "/api/undo":
                status, data = state.undo(client)
            else:
                status, data = 404, {"error": "not found"}
            self._json(status, data)

    Handler.token, Handler.hosts, Handler.sessions = token, hosts, set()
    return Handler


def check_address(host: str, port: int, allow_remote: bool) -> bool:
    """Whether `host` is a loopback address; a one-line error for a bad host or port, or a non-loopback host
    without `allow_remote`."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: a port is a number from 0 (any free one) to 65535")
    name = host.strip("[]")
    try:
        address = ipaddress.ip_address("127.0.0.1" if name == "localhost" else name)
    except ValueError:
        raise UsageError(f"--host {host!r}: give an IP address to listen on (127.0.0.1, or with --allow-remote "
                         "the address of one network interface)") from None
    if address.is_unspecified:
        raise UsageError(f"--host {host}: listening on every interface is refused; give the address of one "
                         "interface with --allow-remote, or keep the default 127.0.0.1")
    if not address.is_loopback and not allow_remote:
        raise UsageError(f"--host {host} is reachable from other machines; the page shows your data and takes "
                         "labels: add --allow-remote if that is what you want")
    return address.is_loopback


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 0, open_browser: bool = True,
          show_ai_label: bool = False, ready: Any = None, allow_remote: bool = False) -> None:
    """Serve until interrupted; prints the URL first. `ready(url, server)` is called once it listens (tests)."""
    from cai.review.review import judge_run_folder
    from cai.runs.store import FolderLock

    loopback = check_address(host, port, allow_remote)
    run = judge_run_folder(run_dir)
    lock = FolderLock(run).acquire()  # one writer per run: a second server (or a judge run) stops here
    try:
        state = ReviewState(run, show_ai_label)
        token = secrets.token_urlsafe(24)
        page = (data_dir("prompts") / "review" / "page.html").read_bytes()
        family_host = host.strip("[]")
        try:
            server = ThreadingHTTPServer((family_host, port), None)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        bound = server.server_address[1]
        shown = f"[{family_host}]" if ":" in family_host else family_host
        names = {shown} | ({"127.0.0.1", "localhost", "[::1]"} if loopback else set())
        hosts = {f"{name}:{bound}" for name in names}
        codes = {secrets.token_urlsafe(24): time.monotonic() + 120.0}
        server.RequestHandlerClass = make_handler(state, token, hosts, page, codes)
        url = f"http://{shown}:{bound}/?token={token}"
        print(url, flush=True)
        if not loopback:
            print(f"\n*** WARNING: serving on {host}, reachable from other machines (--allow-remote). Anyone with "
                  "the token above can read the pairs and label them.\n", file=sys.stderr, flush=True)
        print(f"cai review: {len(state.queue)} pairs queued, {len(state.labelled())} labelled; labels go to "
              f"{state.path}. Ctrl-C stops.", flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(f"http://{shown}:{bound}/login?code={next(iter(codes))}")  # no token in its arguments
        if ready is not None:
            ready(url, server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            state.log.close()
    finally:
        lock.release()
