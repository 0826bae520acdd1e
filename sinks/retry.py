"""What to do after an upload attempt fails, and the loop that keeps trying until the rows are placed.

The SDK's own retry policy is switched off (``retry_total=0``): it retries POST only on 500/503/504 and on a 4xx
with ``Retry-After``, never 429 without the header, 502 or a dropped connection. Here every outcome is decided in
one place and counted:

==========================================  ====================================================================
429                                         wait ``Retry-After`` (or back off when it is missing), retry
5xx, 408, connection errors, timeouts        exponential backoff with full jitter, retry, without end
413                                         split the request in two and send both halves
other 4xx (400 bad payload, ...)            dead-letter the rows with the response
401, 403, 404, unknown stream, TLS, token   fatal: stop the sink with the remedy in the message
==========================================  ====================================================================

Nothing here logs or formats a token or a secret: error texts come from the service's response body.
"""

from __future__ import annotations

import email.utils
import enum
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from sinks.request_builder import Request, encode, split_request


class FatalSinkError(Exception):
    """A problem retrying cannot fix (credentials, role, DCR or stream name, TLS trust). Worded for the operator."""


class Abandoned(Exception):
    """The sink is stopping while a request was still being retried; its rows stay uncommitted and are re-sent."""


class Action(enum.Enum):
    RETRY = "retry"
    SPLIT = "split"
    DEAD_LETTER = "dead_letter"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes, for error messages."""

    destination: str
    endpoint: str
    dcr: str
    stream: str
    credential_mode: str


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    status: int | None  # HTTP status, None when no response arrived
    code: str  # the service's error code, or the exception class
    message: str  # the service's message (for dead-letter headers and logs)
    delay: float | None = None  # Retry-After in seconds, when the service sent one


def response_status(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, HttpResponseError) else None


def retry_after(headers: object) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds or an HTTP date) or ``retry-after-ms``; None when absent."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    millis = get("retry-after-ms") or get("x-ms-retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed is not None else None


def _error_parts(exc: HttpResponseError) -> tuple[str, str]:
    error = getattr(exc, "error", None)
    headers = getattr(exc.response, "headers", None) or {}
    code = getattr(error, "code", None) or headers.get("x-ms-error-code")
    message = getattr(error, "message", None) or exc.reason or str(exc).splitlines()[0]
    return str(code or type(exc).__name__), str(message)


def classify(exc: BaseException, target: Target) -> Decision:
    """The decision for one failed attempt; FATAL decisions carry the operator message."""
    where = f"{target.endpoint} (destination {target.destination!r})"
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        status = exc.status_code
        code, message = _error_parts(exc)
        headers = getattr(exc.response, "headers", None) or {}
        if status == 429:
            return Decision(Action.RETRY, status, code, message, retry_after(headers))
        if status == 413:
            return Decision(Action.SPLIT, status, code, message)
        if status >= 500 or status == 408:
            return Decision(Action.RETRY, status, code, message, retry_after(headers))
        if status == 401:
            return Decision(Action.FATAL, status, code,
                            f"401 from {where}: the credential's token was rejected ({code}: {message}) — check the "
                            f"tenant id and client id of credential mode {target.credential_mode!r}, that the token is "
                            f"for https://monitor.azure.com, and that the principal has the Monitoring Metrics "
                            f"Publisher role on DCR {target.dcr}")
        if status == 403:
            return Decision(Action.FATAL, status, code,
                            f"403 from {where}: the principal may not ingest into DCR {target.dcr} ({code}: {message})"
                            f" — assign it the Monitoring Metrics Publisher role on that DCR (a new role assignment "
                            f"can take up to 30 minutes to apply)")
        if status == 404:
            return Decision(Action.FATAL, status, code,
                            f"404 from {where}: DCR {target.dcr} was not found ({code}: {message}) — check "
                            f"dcr_immutable_ids (the DCR's immutableId, dcr-…, not its resource id) and that the "
                            f"endpoint is the DCE or the DCR's own logs ingestion endpoint in the DCR's region")
        if status == 400 and _names_unknown_stream(code, message, target.stream):
            return Decision(Action.FATAL, status, code,
                            f"400 from {where}: stream {target.stream!r} is not declared in DCR {target.dcr} "
                            f"({code}: {message}) — set stream_name to a key of the DCR's streamDeclarations "
                            f"(it begins with Custom-)")
        return Decision(Action.DEAD_LETTER, status, code, message)
    if isinstance(exc, ClientAuthenticationError):  # raised by the credential itself, before any request
        return Decision(Action.FATAL, None, type(exc).__name__,
                        f"no token for {where} with credential mode {target.credential_mode!r}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} — check the credential "
                        f"settings (tenant id, client id, secret or certificate, or the pod's workload/managed "
                        f"identity)")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return Decision(Action.FATAL, None, "CERTIFICATE_VERIFY_FAILED",
                            f"TLS to {where} failed: the server certificate is not trusted — set ca_bundle to the "
                            f"CA file that signed it (for the local workspace: the CA path that "
                            f"`secstream workspace serve` prints)")
        if "non-TLS" in text:
            return Decision(Action.FATAL, None, type(exc).__name__,
                            f"{where}: bearer tokens are only sent over https — use an https endpoint")
        return Decision(Action.RETRY, None, type(exc).__name__, text.splitlines()[0] if text else "")
    raise exc  # a bug in our code (e.g. TypeError): let it surface with its traceback


def _names_unknown_stream(code: str, message: str, stream: str) -> bool:
    return "stream" in code.lower() or (stream in message and "stream" in message.lower())


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog), capped."""

    base: float = 0.5
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1 = first retry)."""
        return self.rng.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


@dataclass(slots=True)
class Placed:
    """Where the rows of (part of) a request ended up."""

    request: Request
    body: bytes  # gzip JSON as sent (or as it would have been sent)
    request_id: str
    dcr: str
    attempts: int
    dead_letter: Decision | None = None  # None = accepted by the workspace


# send(dcr, gzip_body, request_id) raises the SDK's exceptions; on_attempt(status, seconds) is for metrics.
Send = Callable[[str, bytes, str], None]
OnAttempt = Callable[[str, float], None]
# on_placed(placed) is called (in the delivering thread) as each part is placed, before the rest of a split request
OnPlaced = Callable[[Placed], None]


@dataclass(slots=True)
class Deliverer:
    """Delivers one request until all of its rows are accepted or dead-lettered (or the sink stops)."""

    send: Send
    target_for: Callable[[str], Target]
    max_wire_bytes: int
    gzip_level: int
    backoff: Backoff
    stop: threading.Event
    on_attempt: OnAttempt | None = None

    def deliver(self, request: Request, dcr: str, on_placed: OnPlaced | None = None) -> list[Placed]:
        """Place every row of ``request``; ``on_placed`` hears of each part as soon as it is placed (so a caller
        can record the rows of a split request's first halves while the others are still on their way)."""
        placed: list[Placed] = []
        for part, body in encode(request, self.max_wire_bytes, self.gzip_level):
            if not body:  # one row whose gzip alone is over the limit
                placed.append(_report(on_placed, Placed(part, b"", str(uuid.uuid4()), dcr, 0, Decision(
                    Action.DEAD_LETTER, None, "row-too-large", "a single row is over the request size limit"))))
                continue
            placed.extend(self._deliver_body(part, body, dcr, on_placed))
        return placed

    def _deliver_body(self, request: Request, body: bytes, dcr: str, on_placed: OnPlaced | None) -> list[Placed]:
        request_id = str(uuid.uuid4())  # the same on every attempt: the service can tell retries apart
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                self.send(dcr, body, request_id)
            except Exception as exc:
                decision = classify(exc, self.target_for(dcr))
                self._count(str(decision.status or decision.code), started)
            else:
                self._count("204", started)
                return [_report(on_placed, Placed(request, body, request_id, dcr, attempt))]
            if decision.action is Action.FATAL:
                raise FatalSinkError(decision.message)
            if decision.action is Action.DEAD_LETTER:
                return [_report(on_placed, Placed(request, body, request_id, dcr, attempt, decision))]
            if decision.action is Action.SPLIT:
                if request.row_count < 2:
                    return [_report(on_placed, Placed(request, body, request_id, dcr, attempt, decision))]
                first, second = split_request(request)
                return self.deliver(first, dcr, on_placed) + self.deliver(second, dcr, on_placed)
            wait = decision.delay if decision.delay is not None else self.backoff.delay(attempt)
            if self.stop.wait(wait):
                raise Abandoned(f"stopped while retrying request {request_id}")

    def _count(self, status: str, started: float) -> None:
        if self.on_attempt is not None:
            self.on_attempt(status, time.perf_counter() - started)


def _report(on_placed: OnPlaced | None, placed: Placed) -> Placed:
    if on_placed is not None:
        on_placed(placed)
    return placed
