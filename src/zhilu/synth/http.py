"""JSON over HTTP with retries, back-off, a rate limit, a total deadline and a size limit
(standard library ``http.client`` only).

What a hostile or broken server cannot do to a request:

- redirect it elsewhere: only redirects to the same scheme, host and port are followed, and a
  POST only through 307/308 (which keep the method and body); anything else (another host or
  port, a POST turned into a GET by 301/302/303) is refused with one line naming both URLs, so
  an ``Authorization`` header never reaches another server;
- hold it longer than ``timeout_s``: one deadline for the whole request (connect, send, the reply
  headers and body, every retry and back-off wait); a watchdog closes the socket at the deadline,
  so a server that drips a byte every few seconds or never answers is cut off on time;
- send more than ``max_bytes`` (checked on ``Content-Length`` and while reading);
- end the run with a traceback: a reply that is not UTF-8 or not JSON is one ``RemoteError`` line
  with the URL and the status.

A ``cancel`` event (set when another request of the run failed for good) closes the socket of a
request in flight and ends its retries at once.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any, Mapping

from zhilu.errors import ZhiluError

log = logging.getLogger(__name__)

RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)
REDIRECT_STATUS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
DEFAULT_MAX_BYTES = 64 << 20
CHUNK = 1 << 16


class RemoteError(ZhiluError):
    """A remote service failed for good (after the retries, or with a client error such as 401 or 404)."""


class Cancelled(RemoteError):
    """The request was cancelled because another request of the run failed."""


class _Transient(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


def _origin(url: str) -> tuple[str, str, int]:
    u = urllib.parse.urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port or (443 if u.scheme == "https" else 80)


def _one_line(data: bytes | str, n: int = 120) -> str:
    """At most ``n`` characters of a body, as a quoted one-line string."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(text[:n])


class _Watchdog:
    """Closes ``conn``'s socket at ``deadline`` (monotonic) or when ``cancel`` is set, whichever first."""

    def __init__(self, conn: http.client.HTTPConnection, deadline: float, cancel: threading.Event | None) -> None:
        self.conn, self.deadline, self.cancel = conn, deadline, cancel
        self.done = threading.Event()
        self.fired: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.02):
            if self.cancel is not None and self.cancel.is_set():
                self.fired = "cancelled"
            elif time.monotonic() >= self.deadline:
                self.fired = "deadline"
            else:
                continue
            sock = self.conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return

    def stop(self) -> None:
        self.done.set()


def _attempt(method: str, url: str, data: bytes | None, headers: Mapping[str, str], deadline: float,
             max_bytes: int, cancel: threading.Event | None, what: str, timeout_s: float) -> tuple[int, Any]:
    """One request (following same-origin redirects); returns ``(status, decoded JSON)`` or raises."""
    for _ in range(MAX_REDIRECTS + 1):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise RemoteError(f"{what} {url}: not an http(s) URL")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Transient(f"no reply within the deadline (timeout_s={timeout_s:g}, for the whole request)")
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        kwargs = {"context": ssl.create_default_context()} if u.scheme == "https" else {}
        conn = cls(u.hostname, u.port, timeout=remaining, **kwargs)
        dog = _Watchdog(conn, deadline, cancel)
        try:
            path = urllib.parse.urlunsplit(("", "", u.path or "/", u.query, ""))
            conn.request(method, path, body=data, headers=dict(headers))
            resp = conn.getresponse()
            status = resp.status
            if status in REDIRECT_STATUS:
                location = resp.getheader("Location") or ""
                target = urllib.parse.urljoin(url, location)
                if _origin(target) != _origin(url):
                    raise RemoteError(f"{what} {url}: HTTP {status} redirect to {target} refused (another host or "
                                      "port: the request and its credentials are not sent there; use the final URL)")
                if method == "POST" and status not in (307, 308):
                    raise RemoteError(f"{what} {url}: HTTP {status} redirect to {target} refused (it would turn the "
                                      "POST into a GET; use the final URL)")
                url = target
                continue
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise RemoteError(f"{what} {url}: HTTP {status}: the reply is {int(length):,} bytes, over the "
                                  f"limit of {max_bytes:,} (max_response_bytes)")
            body = bytearray()
            while True:
                chunk = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise RemoteError(f"{what} {url}: HTTP {status}: the reply exceeds the limit of {max_bytes:,} "
                                      "bytes (max_response_bytes)")
            if dog.fired:  # the watchdog's shutdown reads as the end of the body
                raise OSError("socket closed by the watchdog")
        except (OSError, http.client.HTTPException) as exc:
            if dog.fired == "cancelled":
                raise Cancelled(f"{what} {url}: cancelled (another request of the run failed)") from None
            if dog.fired == "deadline" or (isinstance(exc, TimeoutError) and time.monotonic() >= deadline - 0.1):
                raise _Transient(f"no complete reply within the deadline (timeout_s={timeout_s:g}, "
                                 "for the whole request)") from None
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        finally:
            dog.stop()
            conn.close()
        if status >= 400:
            detail = _one_line(bytes(body), 200)
            retry_after = None
            if status in RETRY_STATUS:
                try:
                    retry_after = float(resp.getheader("Retry-After") or "")
                except ValueError:
                    pass
                raise _Transient(f"HTTP {status} {detail}", retry_after)
            raise RemoteError(f"{what} {url}: HTTP {status} {detail}")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteError(f"{what} {url}: HTTP {status}: the reply is not UTF-8 (byte {exc.start}: "
                              f"{bytes(body)[exc.start:exc.start + 4]!r}); first bytes {_one_line(bytes(body), 60)}"
                              ) from None
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            raise RemoteError(f"{what} {url}: HTTP {status}: the reply is not JSON: {_one_line(text)}") from None
    raise RemoteError(f"{what} {url}: more than {MAX_REDIRECTS} redirects")


def request_json(url: str, payload: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 limiter: RateLimiter | None = None, what: str = "request", max_bytes: int = DEFAULT_MAX_BYTES,
                 cancel: threading.Event | None = None) -> Any:
    """GET (``payload=None``) or POST JSON, decode the JSON reply.

    Connection errors, a missed deadline of one attempt and the status codes in ``RETRY_STATUS``
    are retried up to ``max_retries`` times with exponential back-off and jitter (a ``Retry-After``
    header wins), all within ``timeout_s`` in total; other HTTP errors raise ``RemoteError`` at once
    with the server's message (one line).
    """
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8") if payload is not None else None
    hdrs = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    method = "POST" if data is not None else "GET"
    deadline = time.monotonic() + timeout_s
    last = ""
    attempts = 0
    for attempt in range(max_retries + 1):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"{what} {url}: cancelled (another request of the run failed)")
        if limiter is not None:
            limiter.acquire()
        attempts += 1
        wait = min(max_backoff_s, backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
        try:
            return _attempt(method, url, data, hdrs, deadline, max_bytes, cancel, what, timeout_s)[1]
        except _Transient as exc:
            last = str(exc)
            if exc.retry_after is not None:
                wait = min(max_backoff_s, exc.retry_after)
        left = deadline - time.monotonic()
        if attempt == max_retries or left <= 0:
            break
        if wait >= left:
            log.warning("%s %s failed (%s); no time left for a retry within timeout_s=%g", what, url, last, timeout_s)
            break
        log.warning("%s %s failed (%s); retry %d/%d in %.1fs", what, url, last, attempt + 1, max_retries, wait)
        if cancel is not None:
            if cancel.wait(wait):
                raise Cancelled(f"{what} {url}: cancelled (another request of the run failed)")
        else:
            time.sleep(wait)
    raise RemoteError(f"{what} {url}: failed after {attempts} attempts ({last})")
