"""Fault injection: decide, per ingestion request, whether to answer normally or misbehave."""

from __future__ import annotations

import random
from collections import deque

from secstream.config import WorkspaceFaultSettings
from workspace.errors import ApiError

OK = "ok"


class FaultInjector:
    """A schedule is consumed first (one entry per request); then each rate is an independent draw."""

    def __init__(self, settings: WorkspaceFaultSettings | None = None) -> None:
        self.configure(settings or WorkspaceFaultSettings())

    def configure(self, settings: WorkspaceFaultSettings) -> None:
        self.settings = settings
        self.schedule: deque[str] = deque(settings.schedule)
        self.random = random.Random(settings.seed)

    def decide(self) -> str:
        if self.schedule:
            return self.schedule.popleft()
        s = self.settings
        for outcome, rate in (("drop", s.rate_drop), ("429", s.rate_429), ("500", s.rate_500),
                              ("503", s.rate_503), ("slow", s.rate_slow)):
            if rate and self.random.random() < rate:
                return outcome
        return OK

    def error_for(self, outcome: str) -> ApiError | None:
        """The reply an injected status outcome stands for (None for ok/slow/drop)."""
        if outcome == "429":
            return ApiError(429, "TooManyRequests", "Too many requests (injected fault). Retry later.",
                            retry_after=self.settings.retry_after)
        if outcome == "500":
            return ApiError(500, "InternalServerError", "An internal server error occurred (injected fault).")
        if outcome == "503":
            return ApiError(503, "ServiceUnavailable", "The service is temporarily unavailable (injected fault).")
        return None
