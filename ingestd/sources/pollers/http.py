"""One async HTTP layer for every poller: auth, retries, rate limits, redirects, limits.

- Auth: OAuth 2.0 client credentials (token fetched on first use, refreshed
  `REFRESH_MARGIN` seconds before `expires_in`, fetched again once on a 401),
  OAuth 1.0a two-legged signing by oauthlib (HMAC-SHA256 or HMAC-SHA1; every
  query parameter goes into the signature base string), or a static bearer
  token. The token response's cookies stay in the client's jar (Aeries' load
  balancer wants them back).
- Compressed transfer: every request asks for `Accept-Encoding: gzip` (gzip
  only: the body is read raw, as it came, and decoded here, not by httpx). A
  `Content-Encoding` of gzip or x-gzip is decompressed (several members too),
  identity or none is taken as is, any other is a PullError naming it (not
  retried). The gzip bytes as received stay in `ApiResponse.gzipped`, so the
  page archive keeps them without compressing the body again (base.py).
- Retries with exponential backoff and full jitter on 429/500/502/503/504,
  timeouts, connection errors, truncated or non-JSON bodies and gzip bodies
  that do not decompress ("bad_gzip") (a 2xx body is parsed, once decoded, by
  json.loads, or by the caller's `parse`, which raises ValueError for a body
  that is not JSON); `Retry-After`
  (seconds or an HTTP date) and Clever's `X-RateLimit-Reset` (unix time) say
  how long to wait when present. Other 4xx are not retried.
- Redirects are followed only to the same scheme, host and port.
- At most `max_concurrent` requests in flight per client (per tenant).
- Response bodies are never logged (they hold student data); neither are
  secrets, tokens or signatures.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gc
import gzip
import json
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urljoin, urlsplit

import httpx

from ingestd import __version__
from ingestd.logging import get_logger
from ingestd.sources.pollers.base import PullError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REFRESH_MARGIN = 120.0
MAX_REDIRECTS = 5
ACCEPT_ENCODING = "gzip"  # only what `decode_body` decodes
GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})


class HttpError(PullError):
    """The API answered with an error status (after any retries)."""

    def __init__(self, status: int, url: str, message: str) -> None:
        super().__init__(message, f"http_{status}")
        self.status = status
        self.url = url


class _BadGzip(Exception):
    """A gzip body that does not decompress (truncated or corrupt): retried."""


@dataclass(frozen=True, slots=True)
class _Received:
    """One answer as it came: status and headers, and the body's bytes as sent (raw: still
    compressed if the server compressed them)."""

    response: httpx.Response
    raw: bytes


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """A successful (2xx) response; its body decoded and parsed once, when it arrived (by
    json.loads, or by the `parse` the request was given). `content` is the body decoded;
    `gzipped` the body as received when the server sent it gzip-compressed, else None."""

    status: int
    url: str
    headers: httpx.Headers
    content: bytes
    data: Any
    gzipped: bytes | None = None

    def json(self) -> Any:
        """The body as JSON."""
        return self.data


class Auth(Protocol):
    """Puts credentials on a request; `invalidate(rejected)` after a 401.

    `rejected` is the Authorization header the server refused, so that several
    requests refused at once (the token expired under concurrent pages) make one
    new token, not one each.
    """

    async def apply(self, request: httpx.Request, client: httpx.AsyncClient) -> None: ...

    def invalidate(self, rejected: str | None) -> None: ...


class BearerAuth:
    """A static token (ClassLink proxies, Clever district tokens)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def apply(self, request: httpx.Request, client: httpx.AsyncClient) -> None:
        request.headers["Authorization"] = f"Bearer {self._token}"

    def invalidate(self, rejected: str | None) -> None:
        pass  # nothing to refresh: a second 401 fails the pull


class OAuth2ClientCredentials:
    """OAuth 2.0 client credentials grant, HTTP Basic client authentication (RFC 6749 2.3.1)."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scopes: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self._basic = base64.b64encode(
            f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
        ).decode()
        self.scopes = scopes or []
        self.clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def apply(self, request: httpx.Request, client: httpx.AsyncClient) -> None:
        token = await self._current(client)
        request.headers["Authorization"] = f"Bearer {token}"

    def invalidate(self, rejected: str | None) -> None:
        if rejected == f"Bearer {self._token}":
            self._token = None  # else another request already replaced it

    async def _current(self, client: httpx.AsyncClient) -> str:
        async with self._lock:
            if self._token is None or self.clock() >= self._expires - REFRESH_MARGIN:
                await self._fetch(client)
            assert self._token is not None
            return self._token

    async def _fetch(self, client: httpx.AsyncClient) -> None:
        form = {"grant_type": "client_credentials"}
        if self.scopes:
            form["scope"] = " ".join(self.scopes)
        headers = {
            "Authorization": f"Basic {self._basic}",
            "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
            "Accept": "application/json",
        }
        try:
            response = await client.post(self.token_url, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise PullError(
                f"token endpoint unreachable ({exc.__class__.__name__})", "token_unreachable"
            ) from None
        self.fetches += 1
        if response.status_code != 200:
            raise PullError(
                f"the token endpoint refused the client credentials (HTTP "
                f"{response.status_code}); check client_id and the secret",
                "token_refused",
            )
        try:
            data = response.json()
            token = data["access_token"]
            lifetime = float(data.get("expires_in") or 3600)  # PowerSchool sends a string
        except (ValueError, KeyError, TypeError):
            raise PullError(
                "the token endpoint's answer holds no access_token", "token_invalid"
            ) from None
        self._token = str(token)
        self._expires = self.clock() + lifetime


class OAuth1Signer:
    """OAuth 1.0a two-legged signing (no token): every request signed by oauthlib."""

    def __init__(self, consumer_key: str, consumer_secret: str, method: str = "HMAC-SHA256"):
        from oauthlib import oauth1

        methods = {
            "HMAC-SHA256": oauth1.SIGNATURE_HMAC_SHA256,
            "HMAC-SHA1": oauth1.SIGNATURE_HMAC_SHA1,
        }
        self._client = oauth1.Client(
            consumer_key,
            client_secret=consumer_secret,
            signature_method=methods[method],
            signature_type=oauth1.SIGNATURE_TYPE_AUTH_HEADER,
        )

    async def apply(self, request: httpx.Request, client: httpx.AsyncClient) -> None:
        _, headers, _ = self._client.sign(str(request.url), http_method=request.method)
        request.headers["Authorization"] = headers["Authorization"]

    def invalidate(self, rejected: str | None) -> None:
        pass  # a fresh nonce and timestamp are made per request anyway


class ApiClient:
    """Requests to one vendor API for one tenant."""

    def __init__(
        self,
        base_url: str,
        auth: Auth | None = None,
        *,
        max_concurrent: int = 4,
        timeout: float = 60.0,
        max_attempts: int = 6,
        backoff: float = 1.0,
        backoff_cap: float = 60.0,
        max_wait: float = 900.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        log_context: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.base_path = parts.path
        self.auth = auth
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.max_wait = max_wait
        self.sleep = sleep
        self._slots = asyncio.Semaphore(max_concurrent)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,
                "User-Agent": f"ingestd/{__version__}",
            },
        )
        self.log = get_logger(**(log_context or {}))
        self.requests = 0
        self.retries = 0

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def url_for(self, path: str) -> str:
        """An absolute URL for `path`: a collection under the base URL ("/users"), a path
        from the server's root that a link gave ("/ims/oneroster/v1p1/users?offset=100",
        "/v3.0/users?starting_after=x"), or an absolute URL on the same host."""
        if path.startswith(("http://", "https://")):
            url = path
        elif self.base_path and path.startswith(self.base_path + "/"):
            url = self.origin + path
        elif path.startswith("/"):
            url = self.base_url + path
        else:
            url = self.base_url + "/" + path
        if not _same_origin(url, self.origin):
            raise PullError(f"a link leads to another host ({urlsplit(url).netloc})", "off_host")
        return url

    async def get(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        parse: Callable[[bytes], Any] | None = None,
    ) -> ApiResponse:
        """GET a JSON document; retries as the module says; HttpError or PullError if not.
        `parse` (default json.loads) turns the body into `ApiResponse.data`; a ValueError
        from it is a body that is not JSON, retried as such."""
        return await self.request("GET", path, params=params, parse=parse)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        parse: Callable[[bytes], Any] | None = None,
    ) -> ApiResponse:
        """One logical request (with its retries, re-auth and same-host redirects); the body
        decoded as the module says."""
        url = self.url_for(path)
        reauthed = False
        attempt = 0
        redirects = 0
        while True:
            attempt += 1
            wait: float | None = None
            why = ""
            try:
                received = await self._send(method, url, params, json_body)
            except httpx.TimeoutException:
                why = "timeout"
            except httpx.TransportError as exc:  # refused, reset, truncated body
                why = exc.__class__.__name__
            else:
                response = received.response
                status = response.status_code
                if status in (301, 302, 303, 307, 308) and "location" in response.headers:
                    target = urljoin(str(response.request.url), response.headers["location"])
                    if not _same_origin(target, self.origin):
                        raise PullError(
                            f"the server redirects to another host ({urlsplit(target).netloc}); "
                            "check base_url",
                            "off_host",
                        )
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise PullError("too many redirects", "redirect_loop")
                    url, params = target, None  # the location carries its own query
                    attempt -= 1
                    continue
                if status == 401 and not reauthed and self.auth is not None:
                    reauthed = True
                    self.auth.invalidate(response.request.headers.get("authorization"))
                    self.log.info("poll.reauth", path=_path(url))
                    attempt -= 1
                    continue
                if 200 <= status < 300:
                    try:
                        return _success(received, parse or parse_json, url)
                    except _BadGzip:
                        why = "bad_gzip"
                    except ValueError:
                        why = "not_json"
                elif status in RETRY_STATUSES:
                    why = f"http_{status}"
                    wait = _server_wait(response.headers)
                else:
                    raise HttpError(status, _path(url), _describe(status, received))
            if attempt >= self.max_attempts:
                raise PullError(f"{_path(url)} still failing after {attempt} attempts ({why})", why)
            if wait is None:
                wait = random.uniform(0, min(self.backoff_cap, self.backoff * 2**attempt))
            if wait > self.max_wait:
                raise PullError(
                    f"{_path(url)}: the server asks to wait {wait:.0f} s ({why}); "
                    "giving up for now",
                    "rate_limited",
                )
            self.retries += 1
            self.log.warning(
                "poll.retry", path=_path(url), reason=why, attempt=attempt, wait=round(wait, 2)
            )
            await self.sleep(wait)

    async def _send(
        self, method: str, url: str, params: dict[str, Any] | None, json_body: Any
    ) -> _Received:
        """One HTTP exchange; the body read raw (`aiter_raw`: nothing decoded by httpx)."""
        async with self._slots:
            request = self._http.build_request(method, url, params=params, json=json_body)
            if self.auth is not None:
                await self.auth.apply(request, self._http)
                if "cookie" not in request.headers:  # set by the token response just now
                    self._http.cookies.set_cookie_header(request)
            self.requests += 1
            response = await self._http.send(request, stream=True)
            try:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
            return _Received(response, raw)


def _success(received: _Received, parse: Callable[[bytes], Any], url: str) -> ApiResponse:
    """A 2xx answer decoded and parsed: _BadGzip for a gzip body that does not decompress,
    ValueError for a body that is not JSON (both retried), PullError for an encoding we do
    not decode."""
    response = received.response
    encoding = _encoding(response.headers)
    content = decode_body(encoding, received.raw, _path(url))
    data = parse(content)
    gzipped = received.raw if encoding in GZIP_ENCODINGS else None
    return ApiResponse(
        response.status_code, str(response.url), response.headers, content, data, gzipped
    )


def _encoding(headers: httpx.Headers) -> str:
    """The body's Content-Encoding, lower-case: "" for none or identity, the codings as sent
    (comma-separated) when there are several."""
    codings = [c.strip().lower() for c in headers.get("content-encoding", "").split(",")]
    return ", ".join(c for c in codings if c not in ("", "identity"))


def decode_body(encoding: str, raw: bytes, path: str) -> bytes:
    """The body decoded from `encoding` (`_encoding`'s form): _BadGzip for gzip that does
    not decompress, PullError (reason "unsupported_encoding") for anything but gzip or none."""
    if not encoding:
        return raw
    if encoding in GZIP_ENCODINGS:
        return gunzip(raw)
    raise PullError(
        f"{path}: the server sent a body in Content-Encoding {encoding[:40]!r}; only gzip "
        "was asked for (Accept-Encoding: gzip)",
        "unsupported_encoding",
    )


def gunzip(raw: bytes) -> bytes:
    """A gzip body decompressed (every member); _BadGzip if it is truncated or corrupt."""
    try:
        return gzip.decompress(raw)
    except (zlib.error, EOFError, gzip.BadGzipFile):
        raise _BadGzip from None


def _same_origin(url: str, origin: str) -> bool:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() == origin.lower()


def _path(url: str) -> str:
    """The URL's path, for logs and messages (no host, no query: nothing secret)."""
    return urlsplit(url).path


def parse_json(content: bytes) -> Any:
    """The body parsed; ValueError if it is not JSON. A page of 10,000 records makes
    millions of objects: the cyclic garbage collector, which would walk them all again and
    again while they are made, is paused meanwhile (JSON has no cycles to collect)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return json.loads(content)
    finally:
        if paused:
            gc.enable()


def _server_wait(headers: httpx.Headers) -> float | None:
    """Seconds the server asks us to wait: Retry-After (seconds or HTTP date), or
    X-RateLimit-Reset (unix time, Clever)."""
    retry_after = headers.get("retry-after")
    if retry_after:
        retry_after = retry_after.strip()
        if retry_after.isdigit():
            return float(retry_after)
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - time.time())
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            return None
    return None


def _describe(status: int, received: _Received) -> str:
    """A message for an error status: the OneRoster statusInfoSet description of the decoded
    body if any (a short, vendor-written text, not roster data), else the status alone (also
    when the body cannot be decoded or is not JSON)."""
    response = received.response
    hint = {
        401: "authentication failed: check the credentials",
        403: "not shared with this application",
        404: "the API has no such endpoint",
        413: "page too large: lower page_size",
    }.get(status, "")
    detail = ""
    try:
        body = decode_body(_encoding(response.headers), received.raw, "")
        info = json.loads(body).get("statusInfoSet")
        if isinstance(info, list) and info and isinstance(info[0], dict):
            detail = str(info[0].get("imsx_description", ""))[:200]
    except (_BadGzip, PullError, ValueError, AttributeError):
        pass
    text = f"{_path(str(response.request.url))}: HTTP {status}"
    if hint:
        text += f" ({hint})"
    if detail:
        text += f": {detail}"
    return text
