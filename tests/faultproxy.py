"""A fault-injecting HTTP reverse proxy for tests: put it between AWS clients and a local
(moto) server and make a chosen share of requests fail the way S3 and SQS fail.

Stdlib only. The proxy listens on 127.0.0.1, forwards each request unchanged (method,
target, headers including ``Host``, body), so SigV4 signatures made for the proxy's address
stay valid, and relays the response. Faults:

- ``DROP``: close the connection without a response (the request never reaches upstream).
- ``DROP_AFTER``: forward the request, then close without relaying the response (the
  request took effect; the client cannot know).
- ``SLOW_DOWN`` (503 ``SlowDown``) and ``INTERNAL_ERROR`` (500 ``InternalError``): an error
  response in the client's protocol (S3/SQS-query XML, or JSON for AWS JSON protocols).
- ``delay(seconds)``: forward, wait, then relay the response.

Schedules: ``fail_next(n, fault, match)`` fails the next ``n`` requests that ``match``;
``add_random(fault, probability, match)`` fails each matching request with a probability
drawn from a ``random.Random(seed)``. Explicit schedules are consulted first, in the order
they were added, then random rules in order; the first that applies wins. ``match`` is a
predicate over a ``Request`` (method, path, query, headers, body). The draws happen in
request arrival order, so a sequential client sees the same faults on every run.

Counters: ``proxy.counters()`` -> ``{"requests", "forwarded", "injected", <fault name>...}``
(``requests`` counts every request received; ``forwarded`` those sent upstream, including
``DROP_AFTER`` and ``delay``).

Usage::

    with FaultProxy("http://127.0.0.1:5000", seed=1) as proxy:
        proxy.add_random(SLOW_DOWN, 0.2)
        proxy.fail_next(2, DROP, match=lambda r: r.method == "PUT")
        client = boto3.client("s3", endpoint_url=proxy.url, ...)
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import random
import socket
import threading
import time
import uuid
from collections import Counter
from typing import Callable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

__all__ = [
    "DROP",
    "CUT_BODY",
    "DROP_AFTER",
    "INTERNAL_ERROR",
    "SLOW_DOWN",
    "Fault",
    "FaultProxy",
    "Request",
    "delay",
]

#: Headers that belong to one connection and are never forwarded as is.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "expect", "content-length",
})


@dataclasses.dataclass(frozen=True)
class Fault:
    """One kind of failure. ``kind``: ``drop``, ``drop_after``, ``cut_body``, ``error`` or
    ``delay``."""

    name: str
    kind: str
    status: int = 0
    code: str = ""
    message: str = ""
    seconds: float = 0.0


DROP = Fault("drop", "drop")
DROP_AFTER = Fault("drop_after", "drop_after")
#: Forward, then send the headers and only half the body before closing the connection.
CUT_BODY = Fault("cut_body", "cut_body")
SLOW_DOWN = Fault("slow_down", "error", 503, "SlowDown", "Please reduce your request rate.")
INTERNAL_ERROR = Fault("internal_error", "error", 500, "InternalError",
                       "We encountered an internal error. Please try again.")


def delay(seconds: float) -> Fault:
    """Forward, then hold the response for ``seconds``."""
    return Fault("delay", "delay", seconds=float(seconds))


@dataclasses.dataclass(frozen=True)
class Request:
    """What a ``match`` predicate sees."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def target(self) -> str:
        """``X-Amz-Target`` (AWS JSON protocols: ``AmazonSQS.SendMessage``), or ``""``."""
        return self.headers.get("x-amz-target", "")


Match = Callable[[Request], bool]


@dataclasses.dataclass
class _Explicit:
    fault: Fault
    remaining: int
    match: Match | None


@dataclasses.dataclass
class _Random:
    fault: Fault
    probability: float
    match: Match | None


class FaultProxy:
    """Threaded reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str, *, seed: int = 0, port: int = 0,
                 upstream_timeout: float = 30.0):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_timeout = upstream_timeout
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._explicit: list[_Explicit] = []
        self._random: list[_Random] = []
        self._counters: Counter = Counter()
        self._sockets: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", port), _Handler, self)
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every client connection still open."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- schedules -------------------------------------------------------------------------
    def fail_next(self, n: int, fault: Fault = SLOW_DOWN, match: Match | None = None) -> None:
        """Inject ``fault`` into the next ``n`` requests that ``match`` (all when None)."""
        if n > 0:
            with self._lock:
                self._explicit.append(_Explicit(fault, int(n), match))

    def add_random(self, fault: Fault, probability: float, match: Match | None = None) -> None:
        """Inject ``fault`` into each matching request with ``probability`` (seeded)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        with self._lock:
            self._random.append(_Random(fault, float(probability), match))

    def clear(self) -> None:
        """Remove every schedule (counters are kept)."""
        with self._lock:
            self._explicit.clear()
            self._random.clear()

    def counters(self) -> dict[str, int]:
        """Snapshot: ``requests``, ``forwarded``, ``injected`` and one count per fault name."""
        with self._lock:
            out = {"requests": 0, "forwarded": 0, "injected": 0}
            out.update(self._counters)
            return out

    def reset_counters(self) -> None:
        with self._lock:
            self._counters.clear()

    # -- used by the handler ---------------------------------------------------------------
    def _choose(self, request: Request) -> Fault | None:
        with self._lock:
            self._counters["requests"] += 1
            chosen = None
            for rule in self._explicit:
                if rule.remaining > 0 and _matches(rule.match, request):
                    rule.remaining -= 1
                    chosen = rule.fault
                    break
            self._explicit = [r for r in self._explicit if r.remaining > 0]
            if chosen is None:
                for rule in self._random:
                    if _matches(rule.match, request) and self._rng.random() < rule.probability:
                        chosen = rule.fault
                        break
            if chosen is not None:
                self._counters["injected"] += 1
                self._counters[chosen.name] += 1
            return chosen

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(sock)


def _matches(match: Match | None, request: Request) -> bool:
    return match is None or bool(match(request))


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, proxy: FaultProxy):
        self.proxy = proxy
        super().__init__(address, handler)

    def handle_error(self, request, client_address):  # a client going away is no error
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections are closed after this many seconds
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: _Server

    def setup(self):
        super().setup()
        self.server.proxy._track(self.connection, True)
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, False)
            if self._upstream is not None:
                self._upstream.close()

    def log_message(self, format, *args):  # quiet
        pass

    # Every method goes through the same path.
    def do_GET(self):
        self._proxy()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        path, _, query = self.path.partition("?")
        request = Request(self.command, path, query,
                          {k.lower(): v for k, v in self.headers.items()}, body)
        fault = proxy._choose(request)
        if fault is not None and fault.kind == "drop":
            self._drop()
            return
        if fault is not None and fault.kind == "error":
            self._error(fault, request)
            return
        try:
            status, reason, headers, payload = self._forward(body)
        except (OSError, http.client.HTTPException):
            self._drop()  # upstream unreachable: the client sees a broken connection
            return
        proxy._count("forwarded")
        if fault is not None and fault.kind == "drop_after":
            self._drop()
            return
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if fault is not None and fault.kind == "cut_body":
            self.wfile.write(payload[:len(payload) // 2])
            self._drop()
            return
        if payload:
            self.wfile.write(payload)
        self.wfile.flush()

    def _forward(self, body: bytes):
        proxy = self.server.proxy
        for attempt in (0, 1):  # a kept-alive upstream connection may have been closed
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout)
            conn = self._upstream
            try:
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        conn.putheader(name, value)
                if body or "Content-Length" in self.headers or self.command in ("PUT", "POST"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                response = conn.getresponse()
                payload = response.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                conn.close()
                self._upstream = None
                if attempt:
                    raise
                continue
            if response.will_close:
                conn.close()
                self._upstream = None
            headers = [(k, v) for k, v in response.getheaders()
                       if k.lower() not in _HOP_BY_HOP]
            if self.command == "HEAD" or response.status in (204, 304) or response.status < 200:
                length = response.getheader("Content-Length")
                if length is not None and self.command == "HEAD":
                    headers.append(("Content-Length", length))
            else:
                headers.append(("Content-Length", str(len(payload))))
            return response.status, response.reason, headers, payload
        raise ConnectionError("unreachable")

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        _close(self.connection)

    def _error(self, fault: Fault, request: Request) -> None:
        request_id = uuid.uuid4().hex.upper()[:16]
        json_protocol = ("x-amz-target" in request.headers
                         or request.headers.get("content-type", "").startswith(
                             "application/x-amz-json"))
        if json_protocol:
            payload = ('{"__type": "%s", "message": "%s"}'
                       % (fault.code, fault.message.replace('"', "'"))).encode()
            content_type = "application/x-amz-json-1.0"
        else:
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(fault.code)}'
                       f"</Code><Message>{escape(fault.message)}</Message>"
                       f"<RequestId>{request_id}</RequestId></Error>").encode()
            content_type = "application/xml"
        self.send_response_only(fault.status)
        self.send_header("Content-Type", content_type)
        self.send_header("x-amz-request-id", request_id)
        self.send_header("x-amzn-RequestId", request_id)
        if self.command == "HEAD":
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        self.wfile.flush()
