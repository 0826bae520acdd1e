"""Event times as 100 ns ticks since the Unix epoch, parsed without losing precision.

Windows writes ``SystemTime`` with up to 7 fractional digits (a FILETIME is 100 ns ticks); ``datetime`` keeps
only microseconds, so the fraction is handled as text.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

TICKS_PER_SECOND = 10_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?\s*(Z|z|[+-]\d{2}:?\d{2})?\s*$"
)


class TimeFormatError(ValueError):
    """A timestamp this producer cannot read."""


_SECONDS_CACHE: dict[str, int] = {}


def iso_to_ticks(text: str, default_tz: timezone = UTC) -> int:
    """``2019-03-19T23:34:25.4590163Z`` -> ticks. Digits beyond the 7th are truncated (below 100 ns).

    A time without an offset is read in ``default_tz`` (UTC unless the source says otherwise).
    """
    # Fast path for the usual ``...T..:..:..[.f]Z``: whole seconds cached by their text (events cluster in time).
    if len(text) >= 20 and text[-1] == "Z" and text[10] == "T" and (text[19] == "." or len(text) == 20):
        fraction = text[20:-1]
        if fraction.isdigit() or not fraction:
            seconds = _SECONDS_CACHE.get(text[:19])
            if seconds is None:
                seconds = _slow_ticks(text[:19] + "Z", UTC) // TICKS_PER_SECOND
                if len(_SECONDS_CACHE) > 100_000:
                    _SECONDS_CACHE.clear()
                _SECONDS_CACHE[text[:19]] = seconds
            return seconds * TICKS_PER_SECOND + int(fraction[:7].ljust(7, "0") or 0)
    return _slow_ticks(text, default_tz)


def _slow_ticks(text: str, default_tz: timezone) -> int:
    m = _ISO.match(text)
    if m is None:
        raise TimeFormatError(f"not an ISO-8601 time: {text[:64]!r}")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    tz = default_tz
    if offset and offset not in ("Z", "z"):
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    elif offset:
        tz = UTC
    try:
        whole = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz)
    except ValueError as exc:
        raise TimeFormatError(f"not a valid time: {text[:64]!r} ({exc})") from None
    delta = whole - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    fraction = int((frac or "")[:7].ljust(7, "0"))
    return seconds * TICKS_PER_SECOND + fraction


def ticks_to_iso(ticks: int) -> str:
    """Ticks -> ``YYYY-MM-DDTHH:MM:SS.fffffffZ`` (the SecurityEvent datetime shape)."""
    seconds, fraction = divmod(ticks, TICKS_PER_SECOND)
    whole = _EPOCH + timedelta(seconds=seconds)
    return f"{whole:%Y-%m-%dT%H:%M:%S}.{fraction:07d}Z"


def now_us() -> int:
    return time.time_ns() // 1000
