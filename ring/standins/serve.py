"""ring/standins/serve.py: serve a stand-in task's HTTP handler on loopback until SIGTERM.

Shared by dixie.py and finn.py. Owns the server's life (threads, signals, shutdown) and how
a JSON answer is written, not what it answers.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonHandler(BaseHTTPRequestHandler):
    """A handler that answers JSON (HEAD: headers only) and does not log every poll."""

    protocol_version = "HTTP/1.1"

    def send_json(self, code: int, obj: dict, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:  # health polls would flood the log
        pass


def serve(port: int, handler: type[BaseHTTPRequestHandler], log: logging.Logger, routes: str) -> None:
    """Serve `handler` on 127.0.0.1:`port`; TERM or INT stop it cleanly, as ECS stops a task."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True

    def stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on http://127.0.0.1:%d (%s)", port, routes)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    log.info("stopped")
