"""JSON over HTTP with retries, back-off and a rate limit (standard library ``urllib`` only)."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Mapping

from zhilu.errors import ZhiluError

log = logging.getLogger(__name__)

RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)


class RemoteError(ZhiluError):
    """A remote service failed for good (after the retries, or with a client error such as 401 or 404)."""


class RateLimiter:
    """At most ``per_minute`` calls per minute, evenly spaced (thread-safe); ``None`` = no limit."""

    def __init__(self, per_minute: float | None = None, clock=time.monotonic, sleep=time.sleep) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self.sleep(start - now)


def request_json(url: str, payload: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 limiter: RateLimiter | None = None, what: str = "request") -> Any:
    """GET (``payload=None``) or POST JSON, decode the JSON reply.

    Connection errors, time-outs and the status codes in ``RETRY_STATUS`` are retried up to
    ``max_retries`` times with exponential back-off and jitter (a ``Retry-After`` header wins);
    other HTTP errors raise ``RemoteError`` at once with the server's message.
    """
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8") if payload is not None else None
    hdrs = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    last = ""
    for attempt in range(max_retries + 1):
        if limiter is not None:
            limiter.acquire()
        wait = min(max_backoff_s, backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
        try:
            req = urllib.request.Request(url, data=data, headers=hdrs, method="POST" if data is not None else "GET")
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                body = resp.read().decode("utf-8")
            try:
                return json.loads(body)
            except json.JSONDecodeError:
                raise RemoteError(f"{what} {url}: the reply is not JSON: {body[:120]!r}") from None
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200] if exc.fp else ""
            last = f"HTTP {exc.code} {detail}".strip()
            if exc.code not in RETRY_STATUS:
                raise RemoteError(f"{what} {url}: {last}") from None
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            if retry_after:
                try:
                    wait = min(max_backoff_s, float(retry_after))
                except ValueError:
                    pass
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
            last = str(getattr(exc, "reason", exc))
        if attempt < max_retries:
            log.warning("%s %s failed (%s); retry %d/%d in %.1fs", what, url, last, attempt + 1, max_retries, wait)
            time.sleep(wait)
    raise RemoteError(f"{what} {url}: failed after {max_retries + 1} attempts ({last})")
