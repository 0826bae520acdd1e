"""Body decoding, tokens and throttling buckets: the pure parts of the request path."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest

from workspace.auth import TokenVerifier, issue_token, signing_secret
from workspace.body import decode_body, gunzip
from workspace.errors import ApiError
from workspace.limits import DcrLimiter, Limits, TokenBucket


def test_plain_and_gzip_bodies_decode_to_the_same_value() -> None:
    raw = b'[{"Computer": "h", "EventID": 4624}]'
    assert decode_body(raw, "") == decode_body(gzip.compress(raw), "gzip") == [{"Computer": "h", "EventID": 4624}]
    assert decode_body(gzip.compress(raw[:20]) + gzip.compress(raw[20:]), "GZIP") == [{"Computer": "h",
                                                                                         "EventID": 4624}]


@pytest.mark.parametrize(("body", "encoding", "fragment"), [
    (b"not gzip at all", "gzip", "not valid gzip"),
    (gzip.compress(b"[1, 2, 3]")[:-9], "gzip", "truncated"),
    (gzip.compress(b"[1, 2, 3]") + b"junk", "gzip", "magic bytes 1f 8b"),  # a second member that is not gzip
    (b"[{", "", "not valid JSON"),
    (gzip.compress(b"{'single': quotes}"), "gzip", "not valid JSON"),
    (b"", "", "not valid JSON"),
    (b"[]", "br", "Content-Encoding 'br' is not supported"),
])
def test_broken_bodies_are_400_invalid_payload(body: bytes, encoding: str, fragment: str) -> None:
    with pytest.raises(ApiError) as err:
        decode_body(body, encoding)
    assert (err.value.status, err.value.code) == (400, "InvalidPayload")
    assert fragment in err.value.message and err.value.retry_after is None


def test_gzip_bomb_is_refused_not_inflated() -> None:
    bomb = zlib.compress(b"\0" * 10_000_000)  # zlib, then wrapped as gzip below
    body = gzip.compress(b"\0" * 10_000_000)
    assert len(bomb) < 20_000
    with pytest.raises(ApiError) as err:
        gunzip(body, max_size=1_000_000)
    assert err.value.status == 413


def test_optional_uncompressed_limit() -> None:
    raw = b"[" + b'"x",' * 1000 + b'"x"]'
    assert len(decode_body(gzip.compress(raw), "gzip", max_uncompressed=0)) == 1001
    with pytest.raises(ApiError) as err:
        decode_body(gzip.compress(raw), "gzip", max_uncompressed=1000)
    assert err.value.code == "ContentLengthLimitExceeded"


def test_tokens(tmp_path: Path) -> None:
    secret = signing_secret(tmp_path)
    assert signing_secret(tmp_path) == secret and (tmp_path / "token-signing.key").stat().st_mode & 0o077 == 0
    verifier = TokenVerifier(secret)
    good, _ = issue_token(secret)
    verifier.check(f"Bearer {good}")
    verifier.check(f"Bearer {issue_token(secret, audience='https://monitor.azure.com/')[0]}")
    cases = {
        None: "AuthenticationFailed",
        "": "AuthenticationFailed",
        good: "AuthenticationFailed",  # no scheme
        "Basic abc": "AuthenticationFailed",
        "Bearer abc.def.ghi": "InvalidAuthenticationToken",
        f"Bearer {issue_token(b'other-secret' * 3)[0]}": "InvalidAuthenticationToken",
        f"Bearer {issue_token(secret, ttl=-120)[0]}": "InvalidAuthenticationToken",
        f"Bearer {issue_token(secret, audience='https://management.azure.com')[0]}": "InvalidAudience",
    }
    for header, code in cases.items():
        with pytest.raises(ApiError) as err:
            verifier.check(header)
        assert (err.value.status, err.value.code) == (401, code), header
    TokenVerifier(secret, accept_any=True).check("Bearer anything")
    with pytest.raises(ApiError):
        TokenVerifier(secret, accept_any=True).check(None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=2.0, clock=clock)
    bucket.take(2)
    assert bucket.wait_time(1) == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.wait_time(1) == 0


def test_limiter_throttles_per_dcr_with_whole_second_retry_after() -> None:
    clock = FakeClock()
    limiter = DcrLimiter(Limits(requests_per_minute=60, bytes_per_minute=6000, burst_seconds=1), clock)
    limiter.admit("dcr-a", 10)
    with pytest.raises(ApiError) as err:
        limiter.admit("dcr-a", 10)
    assert (err.value.status, err.value.code, err.value.retry_after) == (429, "TooManyRequests", 1)
    limiter.admit("dcr-b", 10)  # another DCR has its own buckets
    clock.now = 1.0
    limiter.admit("dcr-a", 10)
    clock.now = 2.0
    limiter.admit("dcr-a", 1000)  # more than the bucket holds: let through when full, leaving a debt
    with pytest.raises(ApiError) as err:
        limiter.admit("dcr-a", 10)  # bytes refill at 100/s: (10 + 900) / 100 = 9.1 s
    assert err.value.retry_after == 10


def test_default_limits_are_the_documented_ones() -> None:
    assert Limits() == Limits(12_000, 2 * 1024**3, 60.0)


class _Transport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default


def test_admin_endpoints_answer_loopback_clients_only(tmp_path: Path) -> None:
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from secstream.config import WorkspaceEmulatorSettings
    from workspace.server import Emulator

    emulator = Emulator(WorkspaceEmulatorSettings(state_dir=tmp_path))

    async def status(peer: str, path: str) -> int:
        request = make_mocked_request("GET", path, transport=_Transport((peer, 50000)))

        async def handler(_: web.Request) -> web.StreamResponse:
            return web.Response(text="ok")
        try:
            return (await emulator.loopback_only(request, handler)).status
        except web.HTTPException as exc:
            return exc.status

    try:
        for peer, path, expected in [("127.0.0.1", "/_emulator/faults", 200), ("::1", "/_emulator/reset", 200),
                                     ("10.1.2.3", "/_emulator/faults", 403), ("192.168.0.7", "/_emulator/health", 403),
                                     ("10.1.2.3", "/dataCollectionRules/x/streams/y", 200)]:
            assert asyncio.run(status(peer, path)) == expected, (peer, path)
    finally:
        emulator.close()
