#!/usr/bin/env python3
"""ring/standins/finn.py: stand-in for the loa-finn task on the local rehearsal ring.

Listens on 127.0.0.1:PORT. GET /health -> 200 {"status": "healthy", "version",
"uptime_seconds", "timestamp"}: like the real Finn, nothing in it reports Dixie.
It reads its environment once at start (as a task does; DIXIE_BASE_URL included when
set) and logs it; GET /debug/config lists the names of the task's variables and the
values of the non-secret ones, so a rehearsal can see what the running task picked up.
It dials nothing. $RUNBOOK_RING_DIR/finn-delay-ms, when present, slows /health by that many
milliseconds (a rehearsal of a slow Finn; Dixie then reports the latency).
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import time
import urllib.parse
from pathlib import Path

from serve import JsonHandler, serve

log = logging.getLogger("finn")
STARTED = time.monotonic()
STARTED_AT = datetime.datetime.now(datetime.timezone.utc)
VERSION = os.environ.get("FINN_VERSION") or "unknown"
RING_DIR = Path(os.environ.get("RUNBOOK_RING_DIR") or Path(__file__).resolve().parents[2] / ".ring")
# Values shown by /debug/config; every other variable shows its name only.
NON_SECRET = {"DIXIE_BASE_URL", "NODE_ENV", "LOG_LEVEL", "PORT", "FINN_VERSION"}
# The variables the task got from its definition and SSM (the ECS agent names them).
TASK_ENV = sorted({n for n in os.environ.get("RING_TASK_ENV_NAMES", "").split(",") if n}
                  | {n for n in NON_SECRET if n in os.environ})
CONFIG = {n: os.environ.get(n) for n in TASK_ENV}


def slowness() -> float:
    """Seconds to wait before answering /health: a rehearsal of a slow Finn. The ring's
    tests write milliseconds to $RUNBOOK_RING_DIR/finn-delay-ms; absent means none."""
    try:
        return max(0.0, float((RING_DIR / "finn-delay-ms").read_text().strip()) / 1000.0)
    except (OSError, ValueError):
        return 0.0


def iso(t: datetime.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Handler(JsonHandler):
    server_version = "finn-ring-standin"

    def do_GET(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/health":
            time.sleep(slowness())
            self.send_json(200, {
                "status": "healthy",
                "version": VERSION,
                "uptime_seconds": int(time.monotonic() - STARTED),
                "timestamp": iso(datetime.datetime.now(datetime.timezone.utc)),
            })
        elif path == "/debug/config":
            self.send_json(200, {
                "env_names": TASK_ENV,
                "values": {n: CONFIG[n] for n in TASK_ENV if n in NON_SECRET},
                "deployment_id": os.environ.get("RING_DEPLOYMENT_ID"),
                "started_at": iso(STARTED_AT),
            })
        else:
            self.send_json(404, {"error": "not found"})

    do_HEAD = do_GET



def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s finn[%(process)d] %(levelname)s %(message)s")
    port = int(os.environ.get("PORT") or 3000)
    log.info("starting loa-finn stand-in %s on 127.0.0.1:%d (deployment %s)", VERSION, port,
             os.environ.get("RING_DEPLOYMENT_ID") or "?")
    for n in TASK_ENV:
        v = CONFIG[n]
        shown = v if n in NON_SECRET or v in (None, "PLACEHOLDER") else f"(set, {len(v)} chars)"
        log.info("  %s = %s", n, shown)
    if CONFIG.get("DIXIE_BASE_URL") is None:
        log.info("  DIXIE_BASE_URL is not set")
    serve(port, Handler, log, "GET /health, /debug/config")


if __name__ == "__main__":
    main()
