"""HTTP to one server with one key: every request's errors become the client's (gptjobs.errors).

Knows the server's address, the key and how an answer fails; nothing of what a request means.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from gptjobs.errors import GptjobsError, Unreachable, from_response

# A followed log or a sample being written may be quiet for long: no read timeout there.
STREAMING = httpx.Timeout(30, read=None)


class Transport:
    def __init__(self, server: str, key: str | None, timeout: float):
        self.server = (server if "://" in server else f"http://{server}").rstrip("/")  # localhost:8000 too
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.server, headers=self.headers, timeout=timeout)

    def unreachable(self, e: Exception) -> Unreachable:
        return Unreachable(f"cannot reach the server at {self.server}: {e}")

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise self.unreachable(e) from None
        if resp.status_code >= 400:
            raise from_response(resp)
        return resp

    def json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.request(method, path, **kw)
        try:
            return resp.json()
        except ValueError:
            raise GptjobsError(f"{self.server} answered {method} {path} with something other than JSON") from None

    @contextmanager
    def stream(self, method: str, path: str, **kw: Any) -> Iterator[httpx.Response]:
        """A response read as it arrives; a connection lost while reading it is Unreachable too."""
        try:
            with self.http.stream(method, path, timeout=kw.pop("timeout", STREAMING), **kw) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise from_response(resp)
                yield resp
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise self.unreachable(e) from None

    def ws_url(self, path: str) -> str:
        return "ws" + self.server.removeprefix("http") + path  # http -> ws, https -> wss

    def close(self) -> None:
        self.http.close()
