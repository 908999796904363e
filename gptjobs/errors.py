"""What the client raises: one hierarchy, so a caller can catch as broadly or as narrowly as it likes.

    GptjobsError              anything below; its message is one readable paragraph
    ├── Unreachable           no answer: refused, reset, timed out, or a stream lost for good
    ├── Timeout               wait(timeout=...) ran out before the run ended
    └── APIError              the server answered no: .status (HTTP), .detail (its `detail`)
        ├── ValidationError   422 with per-field reasons: .errors (FastAPI's items), .fields
        ├── Unauthorized      401 (a WebSocket: 4401)
        ├── Forbidden         403 (4403)
        ├── NotFound          404 (4404): an unknown run, or another owner's
        ├── Conflict          409: already ended, no checkpoint yet, an Idempotency-Key reused
        ├── RateLimited       429: .retry_after, in seconds, when the server says
        └── ServerError       5xx

Knows httpx's Response and nothing of the server's code.
"""

from __future__ import annotations

from typing import Any

import httpx


class GptjobsError(Exception):
    """Base of every error the client raises."""


class Unreachable(GptjobsError):
    """The server could not be reached, or a stream could not be resumed."""


class Timeout(GptjobsError):
    """A wait ran out of time; the run goes on."""


class APIError(GptjobsError):
    """The server answered with an error status."""

    def __init__(self, message: str, status: int, detail: Any = None):
        super().__init__(message)
        self.status = status
        self.detail = detail


class ValidationError(APIError):
    """A 422 that names the fields: `fields` maps each one (`config.n_embd`) to the server's reason."""

    def __init__(self, message: str, status: int, detail: list[dict[str, Any]]):
        super().__init__(message, status, detail)
        self.errors = detail
        self.fields = {field_name(e): str(e.get("msg")) for e in detail}


class Unauthorized(APIError):
    pass


class Forbidden(APIError):
    pass


class NotFound(APIError):
    pass


class Conflict(APIError):
    pass


class RateLimited(APIError):
    def __init__(self, message: str, status: int, detail: Any = None, retry_after: float | None = None):
        super().__init__(message, status, detail)
        self.retry_after = retry_after


class ServerError(APIError):
    pass


BY_STATUS: dict[int, type[APIError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict}


def field_name(error: dict[str, Any]) -> str:
    """A 422 item's `loc` without where it was (body, query, path): `config.n_embd`."""
    return ".".join(str(p) for p in error.get("loc", []) if p not in ("body", "query", "path"))


def api_error(status: int, detail: Any, message: str) -> APIError:
    """The APIError subclass for an HTTP status."""
    if status >= 500:
        return ServerError(message, status, detail)
    return BY_STATUS.get(status, APIError)(message, status, detail)


def from_response(resp: httpx.Response) -> APIError:
    """The server's answer as one readable error: FastAPI's `detail`, or a 422's fields."""
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        detail = " ".join(resp.text.split())[:300] or None  # a proxy's HTML page, on one line
    status = resp.status_code
    if status == 422 and isinstance(detail, list) and all(isinstance(e, dict) for e in detail):
        fields = "\n".join(f"  {field_name(e)}: {e.get('msg')}" for e in detail)
        return ValidationError(f"the server refused the request (422):\n{fields}", status, detail)
    message = f"{status} {resp.reason_phrase}: {detail or '(no detail)'}"
    if status == 429:
        try:
            retry_after: float | None = float(resp.headers["retry-after"])
        except (KeyError, ValueError):
            retry_after = None
        return RateLimited(message, status, detail, retry_after)
    return api_error(status, detail, message)
