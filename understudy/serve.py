"""``understudy serve STORE``: the sagas of a store and their timelines, in a browser, read-only.

A small HTTP server of the standard library. Every request opens the store read-only
(:func:`~understudy.persistence.open_store` with ``read_only=True``), reads what its page needs
and closes it again, so the server holds no connection between requests and never writes.
``/`` lists the sagas (:func:`understudy.picture.list_page`), ``/saga/<id>`` (the id
URL-quoted) draws one (:func:`understudy.picture.saga_page`); anything else is 404. Only GET
and HEAD are answered.

It listens on loopback (127.0.0.1) by default: pages show every saga's payload and step
results, so anyone who can reach the port can read them. A request naming another host than
the one listened on (what a web page of another site would send through DNS rebinding) is
refused while listening on loopback. Requests are logged to the ``understudy.serve`` logger.
"""

from __future__ import annotations

import http.server
import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from understudy import picture
from understudy.errors import UnderstudyError
from understudy.persistence import open_store, redact, secrets_in
from understudy.swimlanes import esc

log = logging.getLogger("understudy.serve")

#: What every page is sent with: never cached (a saga changes), never framed by another site,
#: and no script, style or image from anywhere but the page itself.
HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'none'",
}


class SagaServer(http.server.ThreadingHTTPServer):
    """The server of one store's pages (``location``: a SQLite path or a PostgreSQL URL)."""

    daemon_threads = True  # a slow page never keeps the process from stopping

    def __init__(self, location: str, host: str, port: int) -> None:
        self.location = location
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        shown = f"[{host}]" if self.address_family == socket.AF_INET6 else host
        return f"http://{shown}:{port}/"

    @property
    def loopback(self) -> bool:
        return is_loopback(str(self.server_address[0]))


def make_server(location: str, host: str = "127.0.0.1", port: int = 0) -> SagaServer:
    """A server of the pages of the store at ``location``, bound to ``host``:``port`` (0: any
    free port; the bound one is in ``server_address``) and not serving yet: call
    ``serve_forever()``, and ``shutdown()`` and ``server_close()`` to stop it."""
    return SagaServer(location, host, port)


def run(location: str, host: str = "127.0.0.1", port: int = 8765) -> int:
    """Serve the store at ``location`` until Ctrl-C or SIGTERM; 0 then, 1 when the address
    cannot be listened on."""
    try:
        server = make_server(location, host, port)
    except OSError as exc:
        print(f"understudy: error: cannot listen on {host} port {port}: {exc}", file=sys.stderr)
        return 1
    with server, _stopped_by_signals(server):
        if not server.loopback:
            print(
                f"understudy: warning: listening on {host}, not on loopback: anyone who can "
                f"reach port {server.server_address[1]} can read every saga's payloads and "
                "results, with no password asked",
                file=sys.stderr,
            )
        print(
            f"understudy: serving {redact(location)} read-only on {server.url} (Ctrl-C stops)",
            flush=True,
        )
        with suppress(KeyboardInterrupt):  # a Ctrl-C before the handler below was set
            server.serve_forever()
    print("understudy: stopped serving", flush=True)
    return 0


@contextmanager
def _stopped_by_signals(server: SagaServer) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM make ``serve_forever`` return: their handler calls
    ``shutdown`` from a thread of its own (it waits for the loop, which runs in this thread),
    so that no exception lands in the middle of a request. The previous handlers are put back
    after. Off the main thread, where no handler can be set, the signals keep their meaning."""

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in found)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SagaServer

    def version_string(self) -> str:
        return "understudy"  # the Server header: neither Python's version nor ours is news

    def do_GET(self) -> None:
        self._send(*self._answer())

    def do_HEAD(self) -> None:
        self._send(*self._answer(), head=True)

    def _refuse(self) -> None:
        message = "only GET and HEAD are answered: this server never changes a saga"
        self._send(405, _error_page(405, message), {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _answer(self) -> tuple[int, str]:
        if self.server.loopback and not self._host_allowed():
            return 421, _error_page(421, "this server answers only requests for its own address")
        path = urlsplit(self.path).path
        try:
            return self._page(path)
        except UnderstudyError as exc:
            where = redact(self.server.location)
            log.warning("reading %s for %s failed: %s", where, path, self._scrub(exc))
            return 500, _error_page(500, f"the saga store cannot be read: {self._scrub(exc)}")
        except Exception as exc:  # a bug: the page names it, the log has the traceback
            log.exception("drawing %s failed", path)
            return 500, _error_page(500, f"drawing this page failed: {type(exc).__name__}")

    def _page(self, path: str) -> tuple[int, str]:
        location = self.server.location
        if path == "/":
            with open_store(location, read_only=True) as store:
                return 200, picture.list_page(store, location=location)
        if path.startswith("/saga/") and len(path) > len("/saga/"):
            saga_id = unquote(path[len("/saga/") :])
            with open_store(location, read_only=True) as store:
                page = picture.saga_page(store, saga_id, home="/", location=location)
            if page is None:
                return 404, _error_page(404, f"no saga with id {saga_id!r} in {redact(location)}")
            return 200, page
        return 404, _error_page(404, f"nothing at {path}: the sagas are listed at /")

    def _host_allowed(self) -> bool:
        """Whether the Host header names this machine by a loopback address or ``localhost``,
        as a browser on this machine does: a page of another site that reached this port
        through DNS rebinding names its own host instead."""
        host = (self.headers.get("Host") or "").strip().lower()
        if not host:
            return True  # HTTP/1.0 sends none
        if host.startswith("["):  # [::1]:8765
            name = host[1:].partition("]")[0]
        else:
            name = host.rpartition(":")[0] if host.count(":") == 1 else host
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _scrub(self, exc: Exception) -> str:
        """``exc`` as text without any password the store's URL may carry."""
        text = str(exc)
        for secret in secrets_in(self.server.location):
            text = text.replace(secret, "***")
        return text

    def _send(
        self, status: int, page: str, headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        body = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def _error_page(status: int, message: str) -> str:
    title = {404: "not found", 405: "method not allowed", 421: "misdirected request"}.get(
        status, "error"
    )
    return picture.page(
        f"{status} {title}",
        f'<p class="nav"><a href="/">all sagas</a></p><h1>{status} {esc(title)}</h1>'
        f'<p class="error">{esc(message)}</p>',
    )
