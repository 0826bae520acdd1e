"""Error replies in the service's shape: ``{"error": {"code", "message"}}`` plus ``x-ms-error-code``."""

from __future__ import annotations

import orjson


class ApiError(Exception):
    """A request the service refuses. ``retry_after`` is set only for throttling (429)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        headers = {"x-ms-error-code": self.code}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def body(self) -> bytes:
        return orjson.dumps({"error": {"code": self.code, "message": self.message}})


def content_too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "ContentLengthLimitExceeded",
                    f"Maximum allowed content length: {limit} bytes ({limit // 1_048_576} MB). "
                    f"Provided content length: {size} bytes.")


def dcr_not_found(immutable_id: str) -> ApiError:
    return ApiError(404, "NotFound", f"Data collection rule with immutable Id '{immutable_id}' not found.")
