"""The pollers' HTTP layer against a real HTTP server on 127.0.0.1: auth (OAuth 2.0 client
credentials, OAuth 1.0a checked by an independent verifier, bearer), retries and waits,
redirects, and what is never retried."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import time
from collections.abc import Iterator

import pytest

from ingestd.sources.pollers.base import PullError
from ingestd.sources.pollers.http import (
    ApiClient,
    BearerAuth,
    HttpError,
    OAuth1Signer,
    OAuth2ClientCredentials,
)
from tests.sources.pollers.fakehttp import (
    FakeServer,
    OAuth1Verifier,
    OAuth2Issuer,
    Reply,
    Request,
    Sleeps,
    StaticBearer,
)

BASE = "/ims/oneroster/v1p1"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()

    @s.route("GET", BASE + "/users")
    def users(req: Request) -> Reply:
        return Reply(json={"users": [{"sourcedId": "u1"}], "echo": dict(req.query)})

    with s:
        yield s


def client(server: FakeServer, auth=None, **kw) -> ApiClient:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("timeout", 2.0)
    return ApiClient(server.url + BASE, auth, **kw)


def get(c: ApiClient, path: str = "/users", params: dict | None = None):
    async def go():
        async with c:
            return await c.get(path, params)

    return asyncio.run(go())


# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["HMAC-SHA256", "HMAC-SHA1"])
def test_oauth1_signature_covers_every_query_parameter(server: FakeServer, method: str):
    verifier = OAuth1Verifier(server, "consumer key", "s3cr&t/+=")
    params = {"limit": 100, "offset": 0, "filter": "dateLastModified>'2024-08-01T00:00:00Z'"}
    body = get(client(server, OAuth1Signer("consumer key", "s3cr&t/+=", method)), params=params)
    assert body.json()["echo"]["filter"] == params["filter"]
    assert verifier.verified == 1 and verifier.failures == []


def test_oauth1_wrong_secret_is_refused_and_not_retried(server: FakeServer):
    verifier = OAuth1Verifier(server, "key", "right")
    with pytest.raises(HttpError) as err:
        get(client(server, OAuth1Signer("key", "wrong")))
    assert err.value.status == 401 and "signature mismatch" in err.value.message
    assert len(server.requests) == 2  # the first try and one re-auth, no more
    assert verifier.failures == ["signature mismatch", "signature mismatch"]


def test_oauth1_verifier_refuses_a_replayed_nonce(server: FakeServer):
    verifier = OAuth1Verifier(server, "key", "secret")
    get(client(server, OAuth1Signer("key", "secret")))
    first = server.requests[0]
    assert verifier.problem(first) == "nonce missing or replayed"


def test_oauth2_token_fetched_once_refetched_after_401_and_cookies_sent_back(server: FakeServer):
    issuer = OAuth2Issuer(
        server, "/token", "id with space", "se:cr et", expires_in="1814654",
        protect=BASE, required_scopes=["roster-core.readonly"], cookie="AWSALB=lb1",
    )  # fmt: skip
    auth = OAuth2ClientCredentials(
        server.url + "/token", "id with space", "se:cr et", ["roster-core.readonly"]
    )
    c = client(server, auth)

    async def go() -> None:
        async with c:
            await c.get("/users")
            await c.get("/users")
            issuer.expire_all()  # credentials regenerated mid-pull
            await c.get("/users")

    asyncio.run(go())
    assert issuer.issued == 2 and auth.fetches == 2
    assert [r.path for r in server.requests].count("/token") == 2


def test_a_401_that_arrives_after_the_new_token_does_not_fetch_another(server: FakeServer):
    # Two pages in flight when the token is revoked: the quick one's 401 fetches a new
    # token; the slow one's 401, answered later, names the old token and must reuse the new.
    def slow_first(req: Request) -> Reply | None:
        if ("slow", "1") in req.query:
            time.sleep(0.5)
        return None

    server.before.append(slow_first)
    issuer = OAuth2Issuer(server, "/token", "id", "secret", protect=BASE)
    auth = OAuth2ClientCredentials(server.url + "/token", "id", "secret")

    async def go() -> None:
        async with client(server, auth) as c:
            await c.get("/users")
            issuer.expire_all()
            await asyncio.gather(c.get("/users", {"slow": "1"}), c.get("/users"))

    asyncio.run(go())
    assert issuer.issued == 2 and auth.fetches == 2


def test_oauth2_token_is_refreshed_before_it_expires(server: FakeServer):
    OAuth2Issuer(server, "/token", "id", "secret", expires_in=3600, protect=BASE)
    now = [1000.0]
    auth = OAuth2ClientCredentials(server.url + "/token", "id", "secret", clock=lambda: now[0])
    c = client(server, auth)

    async def go() -> None:
        async with c:
            await c.get("/users")
            now[0] += 3600 - 60  # inside the refresh margin: fetch before it lapses
            await c.get("/users")

    asyncio.run(go())
    assert auth.fetches == 2
    assert all(r.headers.get("authorization", "").startswith("Bearer ") for r in server.requests
               if r.path != "/token")  # fmt: skip


def test_oauth2_bad_client_secret_fails_with_a_clear_reason(server: FakeServer):
    OAuth2Issuer(server, "/token", "id", "secret", protect=BASE)
    with pytest.raises(PullError) as err:
        get(client(server, OAuth2ClientCredentials(server.url + "/token", "id", "nope")))
    assert err.value.code == "token_refused" and "client_id" in err.value.message


def test_bearer_token(server: FakeServer):
    StaticBearer(server, "tok")
    assert get(client(server, BearerAuth("tok"))).json()["users"][0]["sourcedId"] == "u1"
    with pytest.raises(HttpError) as err:
        get(client(server, BearerAuth("other")))
    assert err.value.status == 401


# --- retries and waits ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(server: FakeServer, status: int):
    server.fail_next("/users", times=2, status=status)
    sleeps = Sleeps()
    assert get(client(server, sleep=sleeps)).status == 200
    assert len(server.requests) == 3 and len(sleeps.waits) == 2


def test_retry_after_in_seconds_and_as_http_date_are_honoured(server: FakeServer):
    server.fail_next("/users", status=429, headers={"Retry-After": "7"})
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.fail_next("/users", status=503, headers={"Retry-After": later})
    sleeps = Sleeps()
    get(client(server, sleep=sleeps))
    assert sleeps.waits[0] == 7 and 25 < sleeps.waits[1] <= 30


def test_clever_style_429_waits_until_the_rate_limit_resets(server: FakeServer):
    reset = int(time.time()) + 20
    server.fail_next(
        "/users",
        status=429,
        headers={"X-RateLimit-Reset": str(reset), "X-RateLimit-Remaining": "0"},
    )
    sleeps = Sleeps()
    get(client(server, sleep=sleeps))
    assert 15 < sleeps.waits[0] <= 20


def test_a_wait_longer_than_allowed_gives_up_with_a_reason(server: FakeServer):
    server.fail_next("/users", status=429, headers={"Retry-After": "7200"})
    with pytest.raises(PullError) as err:
        get(client(server, max_wait=600))
    assert err.value.code == "rate_limited" and "7200" in err.value.message


def test_backoff_grows_and_is_capped(server: FakeServer):
    server.fail_next("/users", times=10, status=500)
    sleeps = Sleeps()
    with pytest.raises(PullError) as err:
        get(client(server, sleep=sleeps, max_attempts=6, backoff=1.0, backoff_cap=8.0))
    assert err.value.code == "http_500" and "6 attempts" in err.value.message
    assert len(sleeps.waits) == 5 and all(0 <= w <= 8.0 for w in sleeps.waits)


@pytest.mark.parametrize(
    "fault",
    [{"reset": True}, {"truncate": True}, {"delay": 2.5}],
    ids=["reset", "truncated", "slow"],
)
def test_connection_faults_are_retried(server: FakeServer, fault: dict):
    server.fail_next("/users", **fault)
    assert get(client(server, timeout=1.0)).json()["users"][0]["sourcedId"] == "u1"
    assert len(server.requests) == 2


def test_an_html_page_with_200_is_not_data(server: FakeServer):
    server.fail_next("/users", times=10, status=200, body=b"<html>maintenance</html>")
    with pytest.raises(PullError) as err:
        get(client(server, max_attempts=3))
    assert err.value.code == "not_json"


@pytest.mark.parametrize("status", [400, 403, 404, 422, 501])
def test_other_client_errors_are_not_retried(server: FakeServer, status: int):
    body = b'{"statusInfoSet":[{"imsx_codeMajor":"failure","imsx_description":"nope"}]}'
    server.fail_next("/users", status=status, body=body)
    with pytest.raises(HttpError) as err:
        get(client(server))
    assert err.value.status == status and len(server.requests) == 1
    assert err.value.message.endswith(": nope")


def test_concurrency_is_bounded(server: FakeServer):
    server.fail_next("/users", times=8, delay=0.3)
    inflight = {"now": 0, "max": 0}

    async def go() -> None:
        async with client(server, max_concurrent=3) as c:

            async def one() -> None:
                inflight["now"] += 1
                inflight["max"] = max(inflight["max"], inflight["now"])
                try:
                    await c.get("/users")
                finally:
                    inflight["now"] -= 1

            started = time.monotonic()
            await asyncio.gather(*(one() for _ in range(6)))
            assert time.monotonic() - started >= 0.55  # 6 slow requests, 3 at a time

    asyncio.run(go())


# --- compressed transfer ---------------------------------------------------------------------


@pytest.fixture
def gzip_server() -> Iterator[FakeServer]:
    """Answers ~100 KB of JSON, gzipped when the request allows it (as nginx would)."""
    s = FakeServer(gzip=True, keep_sent=True)

    @s.route("GET", BASE + "/users")
    def users(req: Request) -> Reply:
        return Reply(json={"users": [{"sourcedId": f"u{i}", "givenName": "Ann"} for i in
                                     range(2000)]})  # fmt: skip

    @s.route("GET", BASE + "/orgs")
    def orgs(req: Request) -> Reply:
        return Reply(403, json={"statusInfoSet": [{"imsx_description": "orgs not shared"}]})

    with s:
        yield s


def test_gzip_is_asked_for_and_decoded(gzip_server: FakeServer):
    response = get(client(gzip_server))
    assert [r.headers.get("accept-encoding") for r in gzip_server.requests] == ["gzip"]
    assert gzip_server.sent is not None
    (sent,) = gzip_server.sent
    assert response.headers["content-encoding"] == "gzip"
    assert response.gzipped == sent.wire and len(sent.wire) < len(sent.body) / 5
    assert response.content == sent.body
    assert response.json() == json.loads(sent.body)
    assert response.json()["users"][1999] == {"sourcedId": "u1999", "givenName": "Ann"}


def test_a_plain_answer_keeps_no_gzip(server: FakeServer):
    response = get(client(server))
    assert server.requests[0].headers.get("accept-encoding") == "gzip"
    assert "content-encoding" not in response.headers
    assert response.gzipped is None
    assert response.json()["users"] == [{"sourcedId": "u1"}]


def test_an_error_status_is_described_from_the_decoded_body(gzip_server: FakeServer):
    with pytest.raises(HttpError) as err:
        get(client(gzip_server), "/orgs")
    assert err.value.status == 403 and err.value.message.endswith(": orgs not shared")
    assert gzip_server.sent is not None
    assert gzip.decompress(gzip_server.sent[0].wire) == gzip_server.sent[0].body  # sent gzipped


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_gzip_body_that_does_not_decompress_is_retried(gzip_server: FakeServer, how: str):
    gzip_server.fail_next("/users", bad_gzip=how)
    sleeps = Sleeps()
    response = get(client(gzip_server, sleep=sleeps))
    assert len(gzip_server.requests) == 2 and len(sleeps.waits) == 1
    assert response.json()["users"][0] == {"sourcedId": "u0", "givenName": "Ann"}


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_gzip_body_that_never_decompresses_fails_with_the_reason(server: FakeServer, how: str):
    server.fail_next("/users", times=10, bad_gzip=how)  # a plain server behind a bad proxy
    with pytest.raises(PullError) as err:
        get(client(server, max_attempts=3))
    assert err.value.code == "bad_gzip" and "3 attempts (bad_gzip)" in err.value.message
    assert len(server.requests) == 3


def test_an_encoding_not_asked_for_fails_and_is_not_retried(gzip_server: FakeServer):
    gzip_server.fail_next("/users", times=10, encoding="br")
    with pytest.raises(PullError) as err:
        get(client(gzip_server))
    assert err.value.code == "unsupported_encoding"
    assert "Content-Encoding 'br'" in err.value.message
    assert len(gzip_server.requests) == 1


# --- redirects and links -----------------------------------------------------------------------


def test_redirect_on_the_same_host_is_followed(server: FakeServer):
    server.fail_next("/old", status=302, headers={"Location": BASE + "/users?offset=5"})
    body = get(client(server), "/old").json()
    assert body["echo"] == {"offset": "5"}


def test_redirect_to_another_host_is_refused(server: FakeServer):
    server.fail_next("/users", status=307, headers={"Location": "http://evil.example/steal"})
    with pytest.raises(PullError) as err:
        get(client(server))
    assert err.value.code == "off_host" and len(server.requests) == 1


def test_links_resolve_against_the_base_and_stay_on_host(server: FakeServer):
    c = client(server)
    assert c.url_for("/users") == server.url + BASE + "/users"
    assert c.url_for(BASE + "/users?offset=100") == server.url + BASE + "/users?offset=100"
    assert c.url_for(server.url + BASE + "/users") == server.url + BASE + "/users"
    with pytest.raises(PullError):
        c.url_for("https://elsewhere.example" + BASE + "/users")
    asyncio.run(c.aclose())
