"""ring/standins/addrmap.py: the ring's address map, as the stand-ins apply it.

The map is the `[address_map]` table of a TOML file (runbooks/environments/local.toml):
keys `"host:port"` where host is exact, `*.suffix` or `*`; values `"127.0.0.1:port"`.
Lookup order: the exact host, then the longest matching `*.suffix`, then `*`; the port
must always match. After mapping, the address must be a loopback IP literal (127.0.0.0/8,
::1, or the name `localhost`): anything else is refused before a socket is opened, and no
name is ever resolved through DNS. The file is re-read when its mtime changes.

An optional overlay, $RING_DIR/address_map.overlay.toml (RING_DIR from RUNBOOK_RING_DIR,
else <repo>/.ring; gitignored, never committed), is merged over it, its entries winning:
for a rehearsal that needs an address the environment file does not have yet. The
stand-ins log it when it is in use; delete it when done.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import tomllib

DEFAULT_PORTS = {
    "http": 80, "ws": 80, "https": 443, "wss": 443,
    "postgres": 5432, "postgresql": 5432, "redis": 6379, "rediss": 6379,
    "nats": 4222, "tls": 4222,
}


class Refused(Exception):
    """The address is not loopback after mapping: no connection was opened."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_hostport(s: str) -> tuple[str, int]:
    s = s.strip()
    if s.startswith("["):  # [::1]:5432
        host, _, port = s[1:].partition("]:")
    else:
        host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not host:port: {s!r}")
    return host.lower(), int(port)


def default_overlay() -> str:
    ring = os.environ.get("RUNBOOK_RING_DIR") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".ring")
    return os.path.join(ring, "address_map.overlay.toml")


class AddressMap:
    def __init__(self, path: str | None, overlay: str | None = None) -> None:
        self.main = _MapFile(path or "")
        self.overlay = _MapFile(default_overlay() if overlay is None else overlay, optional=True)
        self.path = self.main.path

    @property
    def error(self) -> str | None:
        return self.main.error or self.overlay.error

    def entries(self) -> dict[tuple[str, int], tuple[str, int]]:
        return self.main.entries() | self.overlay.entries()

    def overlay_in_use(self) -> int:
        return len(self.overlay.entries())

    def lookup(self, host: str, port: int) -> tuple[str, int] | None:
        return lookup(self.entries(), host, port)

    def resolve(self, host: str, port: int) -> tuple[str, int]:
        """(host, port) to dial, or Refused. Never opens a socket, never uses DNS."""
        target = self.lookup(host, port) or (host.lower().strip("[]"), port)
        if not is_loopback(target[0]):
            why = f"{host}:{port} is not loopback and the address map ({self.path or 'none'}) has no entry for it"
            if target[0] != host.lower().strip("[]"):
                why = f"{host}:{port} maps to {target[0]}:{target[1]}, which is not loopback"
            raise Refused(why + "; refusing to connect")
        return ("127.0.0.1" if target[0] == "localhost" else target[0]), target[1]


def lookup(entries: dict, host: str, port: int) -> tuple[str, int] | None:
    host = host.lower().strip("[]")
    if (host, port) in entries:
        return entries[(host, port)]
    best = None
    for (h, p), target in entries.items():
        if p == port and h.startswith("*.") and host.endswith(h[1:]):
            if best is None or len(h) > len(best[0]):
                best = (h, target)
    if best:
        return best[1]
    return entries.get(("*", port))


class _MapFile:
    def __init__(self, path: str, optional: bool = False) -> None:
        self.path = path
        self.optional = optional
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._entries: dict[tuple[str, int], tuple[str, int]] = {}
        self.error: str | None = None

    def entries(self) -> dict[tuple[str, int], tuple[str, int]]:
        if not self.path:
            return {}
        with self._lock:
            try:
                mtime = os.stat(self.path).st_mtime
            except OSError as e:
                self.error = None if self.optional else f"address map {self.path}: {e}"
                self._entries, self._mtime = {}, None
                return {}
            if mtime != self._mtime:
                try:
                    with open(self.path, "rb") as f:
                        table = tomllib.load(f).get("address_map", {})
                    entries = {}
                    for k, v in table.items():
                        entries[split_hostport(k)] = split_hostport(str(v))
                    self._entries, self.error = entries, None
                except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
                    self.error = f"address map {self.path}: {e}"
                    self._entries = {}
                self._mtime = mtime
            return dict(self._entries)
