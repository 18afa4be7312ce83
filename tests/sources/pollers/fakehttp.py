"""A toolkit for fake vendor servers: real HTTP on 127.0.0.1 (stdlib server in a thread),
routes, one-shot faults, OAuth 2.0 token issuing and an OAuth 1.0a verifier written from
RFC 5849 independently of the client (which uses oauthlib).

    server = FakeServer()
    @server.route("GET", r"/ims/oneroster/v1p1/users")
    def users(req: Request) -> Reply: ...
    server.fail_next(r"/users", status=503, times=2, headers={"Retry-After": "1"})
    with server: ...  # started on a free port; server.url

Every request is recorded in `server.requests` (path, query, headers) for assertions.

`FakeServer(gzip=True)` compresses its answers (level `GZIP_LEVEL`, `Content-Encoding: gzip`)
for a request whose Accept-Encoding allows gzip, as nginx or a CDN in front of a vendor API
does; `gzip_seconds` is the CPU time (of the serving threads) spent compressing. With
`keep_sent=True` every answer is kept in `server.sent` (`Sent`: the body before and after
compression) so that tests can compare what the client kept with what was sent
(`assert_archived_as_sent`).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    url: str  # as the client would have signed it: http://host:port/path?query

    def arg(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return default


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if self.body is not None:
            return self.body
        return b"" if self.json is None else json.dumps(self.json).encode()


@dataclass
class Fault:
    """What to do instead of answering, for the next `times` requests matching `pattern`."""

    pattern: re.Pattern[str]
    times: int
    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # close the connection without an answer (RST)
    truncate: bool = False  # send a correct answer's headers, half its body, then close
    delay: float = 0.0  # sleep before answering normally (past the client's timeout)
    after: int = 0  # let this many matching requests through first
    # a correct answer labelled `Content-Encoding: gzip` whose gzip body is cut in half
    # ("truncated": a complete HTTP message, Content-Length matching) or has its deflate
    # data overwritten ("corrupt"), whether or not the client asked for gzip
    bad_gzip: Literal["", "truncated", "corrupt"] = ""
    encoding: str = ""  # a correct answer labelled with this Content-Encoding, body as is


@dataclass
class Sent:
    """One answer as sent (`keep_sent`): its body before (`body`) and after (`wire`) any
    compression."""

    url: str  # the request's, as in Request.url
    status: int
    body: bytes
    wire: bytes


Handler = Callable[[Request], Reply]


class FakeServer:
    GZIP_LEVEL = 1  # nginx's default gzip_comp_level

    def __init__(self, *, gzip: bool = False, keep_sent: bool = False) -> None:
        self.gzip = gzip
        self.gzip_seconds = 0.0
        self.sent: list[Sent] | None = [] if keep_sent else None
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.before: list[Callable[[Request], Reply | None]] = []  # auth checks etc.

    # --- set-up ------------------------------------------------------------------------------

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.routes.append((method, re.compile(pattern + r"\Z"), fn))
            return fn

        return deco

    def fail_next(self, pattern: str, times: int = 1, **how: Any) -> Fault:
        fault = Fault(re.compile(pattern), times, **how)
        with self.lock:
            self.faults.append(fault)
        return fault

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeServer:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out without a delayed ACK

            def do_GET(self) -> None:
                server._serve(self)

            def do_POST(self) -> None:
                server._serve(self)

            def log_message(self, *args: Any) -> None:
                pass

        class _Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up mid-answer (a test ending, a timeout): fine

        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join()
            self._httpd = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for r in self.requests if rx.search(r.path))

    # --- serving -----------------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        parts = urlsplit(h.path)
        host = h.headers.get("Host", "127.0.0.1")
        req = Request(
            method=h.command,
            path=unquote(parts.path),
            query=parse_qsl(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in h.headers.items()},
            body=body,
            url=f"http://{host}{h.path}",
        )
        with self.lock:
            self.requests.append(req)
            fault = self._take_fault(req.path)
        if fault is not None and fault.reset:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
            fault = None
        if fault is not None and fault.status is not None:
            self._answer(h, req, Reply(fault.status, body=fault.body, headers=fault.headers))
            return
        reply = None
        for check in self.before:
            reply = check(req)
            if reply is not None:
                break
        if reply is None:
            reply = self._dispatch(req)
        if fault is not None and fault.truncate:
            data = reply.payload()
            h.send_response(reply.status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if fault is not None and fault.bad_gzip:
            reply = _bad_gzip(reply, fault.bad_gzip)
        elif fault is not None and fault.encoding:
            headers = {**reply.headers, "Content-Encoding": fault.encoding}
            reply = Reply(reply.status, body=reply.payload(), headers=headers)
        self._answer(h, req, reply)

    def _answer(self, h: BaseHTTPRequestHandler, req: Request, reply: Reply) -> None:
        """Send `reply`, gzipped if the server does and the request allows it."""
        wire = self._compressed(req, reply)
        if self.sent is not None:
            with self.lock:
                self.sent.append(Sent(req.url, reply.status, reply.payload(), wire.payload()))
        self._send(h, wire)

    def _compressed(self, req: Request, reply: Reply) -> Reply:
        """`reply` gzipped (timed in `gzip_seconds`) when the server gzips, the request
        accepts it and the reply is not encoded already; else `reply` itself."""
        encoded = any(k.lower() == "content-encoding" for k in reply.headers)
        if not self.gzip or encoded or not accepts_gzip(req.headers.get("accept-encoding", "")):
            return reply
        started = time.thread_time()
        body = gzip.compress(reply.payload(), self.GZIP_LEVEL)
        spent = time.thread_time() - started
        with self.lock:
            self.gzip_seconds += spent
        headers = {**reply.headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        return Reply(reply.status, body=body, headers=headers)

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.pattern.search(path):
                if fault.after > 0:
                    fault.after -= 1
                    return None
                fault.times -= 1
                return fault
        return None

    def _dispatch(self, req: Request) -> Reply:
        for method, rx, fn in self.routes:
            if method == req.method and rx.match(req.path):
                return fn(req)
        return Reply(404, json={"error": "not found"})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, reply: Reply) -> None:
        data = reply.payload()
        h.send_response(reply.status)
        headers = {"Content-Type": "application/json", **reply.headers}
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (named, or `*`, with a q above 0)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def assert_archived_as_sent(folder: Path, sent: list[Sent]) -> int:
    """Every file of a PageArchive `folder` decompresses to its meta line, b"\\n" and a body
    this server sent to that URL with that status; a body sent gzipped is kept as the bytes
    sent (a gzip member holding the meta line, then the server's bytes: not compressed
    again). Returns how many files there are."""
    unmatched: dict[str, list[Sent]] = {}
    for answer in sent:
        unmatched.setdefault(answer.url, []).append(answer)
    files = sorted(folder.glob("*.json.gz"))
    for file in files:
        kept = file.read_bytes()
        line, body = gzip.decompress(kept).split(b"\n", 1)
        meta = json.loads(line)
        candidates = unmatched.get(meta["url"], [])
        answer = next((a for a in candidates if a.body == body), None)
        assert answer is not None, f"{file.name}: no such body was sent to {meta['url']}"
        candidates.remove(answer)
        assert meta["status"] == answer.status, file.name
        if answer.wire != answer.body:  # sent gzipped
            assert kept.endswith(answer.wire), file.name
            assert len(kept) == len(gzip.compress(line + b"\n", 1)) + len(answer.wire)
    return len(files)


def _bad_gzip(reply: Reply, how: str) -> Reply:
    """`reply` labelled gzip, with a gzip body that does not decompress (see Fault)."""
    compressed = gzip.compress(reply.payload(), 1)
    if how == "truncated":
        body = compressed[: len(compressed) // 2]
    else:  # the deflate data after the 10-byte header overwritten, the trailer intact
        middle = max(1, (len(compressed) - 18) // 2)
        body = compressed[:10] + b"\xff" * middle + compressed[10 + middle :]
    headers = {**reply.headers, "Content-Encoding": "gzip"}
    return Reply(reply.status, body=body, headers=headers)


# --- OAuth 2.0 client credentials ------------------------------------------------------------


class OAuth2Issuer:
    """A token endpoint (Basic client auth, form body) and the bearer check for the API.

    `expire_all()` invalidates every issued token (as regenerating credentials does), so the
    next API call gets a 401 and the client must fetch a new token."""

    def __init__(
        self,
        server: FakeServer,
        token_path: str,
        client_id: str,
        client_secret: str,
        *,
        expires_in: int | str = 3600,
        protect: str = r"/",
        required_scopes: list[str] | None = None,
        cookie: str | None = None,
    ) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.expires_in = expires_in
        self.valid: set[str] = set()
        self.issued = 0
        self.required_scopes = required_scopes or []
        self.cookie = cookie
        self.protect = re.compile(protect)
        self.token_path = token_path
        server.route("POST", re.escape(token_path))(self._token)
        server.before.append(self._check)

    def expire_all(self) -> None:
        self.valid.clear()

    def _token(self, req: Request) -> Reply:
        auth = req.headers.get("authorization", "")
        expected = base64.b64encode(
            f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}".encode()
        ).decode()
        form = dict(parse_qsl(req.body.decode()))
        if auth != f"Basic {expected}" or form.get("grant_type") != "client_credentials":
            return Reply(401, json={"error": "invalid_client"})
        scopes = form.get("scope", "").split()
        if any(s not in scopes for s in self.required_scopes):
            return Reply(400, json={"error": "invalid_scope"})
        token = secrets.token_hex(16)
        self.valid.add(token)
        self.issued += 1
        headers = {"Set-Cookie": f"{self.cookie}; Path=/"} if self.cookie else {}
        return Reply(
            json={"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in},
            headers=headers,
        )

    def _check(self, req: Request) -> Reply | None:
        if req.path == self.token_path or not self.protect.match(req.path):
            return None
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid:
            return Reply(401, json={"error": "invalid_token"})
        if self.cookie and self.cookie not in req.headers.get("cookie", ""):
            return Reply(401, json={"error": "load balancer cookie missing"})
        return None


class StaticBearer:
    """Accepts one fixed token (Clever district tokens, ClassLink proxies)."""

    def __init__(self, server: FakeServer, token: str) -> None:
        self.token = token
        server.before.append(self._check)

    def _check(self, req: Request) -> Reply | None:
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(401, json={"error": "invalid token"})
        return None


# --- OAuth 1.0a (RFC 5849), written independently of oauthlib -------------------------------


def _pct(value: str) -> str:
    return quote(value, safe="-._~")


class OAuth1Verifier:
    """Verifies two-legged OAuth 1.0a signatures: HMAC-SHA256 or HMAC-SHA1 over the method,
    the base URL and every query and oauth_* parameter (RFC 5849 3.4.1); timestamps within
    -10/+5 minutes; a nonce used twice is refused."""

    def __init__(self, server: FakeServer, consumer_key: str, consumer_secret: str) -> None:
        self.key, self.secret = consumer_key, consumer_secret
        self.nonces: set[str] = set()
        self.verified = 0
        self.failures: list[str] = []
        server.before.append(self._check)

    def _check(self, req: Request) -> Reply | None:
        problem = self.problem(req)
        if problem is None:
            self.verified += 1
            return None
        self.failures.append(problem)
        return Reply(
            401,
            json={
                "statusInfoSet": [
                    {
                        "imsx_codeMajor": "failure",
                        "imsx_severity": "error",
                        "imsx_description": problem,
                    }
                ]
            },
        )

    def problem(self, req: Request) -> str | None:
        header = req.headers.get("authorization", "")
        if not header.startswith("OAuth "):
            return "no OAuth header"
        oauth = {
            k: unquote(v.strip('"'))
            for k, v in (p.strip().split("=", 1) for p in header[6:].split(",") if "=" in p)
        }
        if oauth.get("oauth_consumer_key") != self.key:
            return "unknown consumer key"
        method = oauth.get("oauth_signature_method")
        digest = {"HMAC-SHA256": hashlib.sha256, "HMAC-SHA1": hashlib.sha1}.get(method or "")
        if digest is None:
            return f"unsupported signature method {method}"
        try:
            ts = int(oauth.get("oauth_timestamp", ""))
        except ValueError:
            return "bad timestamp"
        now = time.time()
        if ts < now - 600 or ts > now + 300:
            return "timestamp outside the allowed window"
        nonce = oauth.get("oauth_nonce", "")
        if not nonce or nonce in self.nonces:
            return "nonce missing or replayed"
        params = [(k, v) for k, v in req.query]
        params += [(k, v) for k, v in oauth.items() if k not in ("oauth_signature", "realm")]
        normalized = "&".join(f"{k}={v}" for k, v in sorted((_pct(k), _pct(v)) for k, v in params))
        parts = urlsplit(req.url)
        base_uri = f"{parts.scheme}://{parts.netloc.lower()}{parts.path}"
        base = "&".join([req.method.upper(), _pct(base_uri), _pct(normalized)])
        key = f"{_pct(self.secret)}&"
        expected = base64.b64encode(hmac.new(key.encode(), base.encode(), digest).digest())
        if not hmac.compare_digest(expected.decode(), oauth.get("oauth_signature", "")):
            return "signature mismatch"
        self.nonces.add(nonce)
        return None


class Sleeps:
    """ApiClient's `sleep` in tests: records each wait asked for; waits that long only with
    `real` (otherwise it just yields), so retry tests run at once."""

    def __init__(self, real: bool = False) -> None:
        self.waits: list[float] = []
        self.real = real

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(seconds if self.real else 0)
