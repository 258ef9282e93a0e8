"""The host side of the fetch jail's network: connections opened on request, to allowed hosts only.

The fetch worker's jail has no network namespace of its own to speak of (it is empty) and may create no
socket but AF_UNIX. To reach a registry it asks the broker, over a ``SOCK_SEQPACKET`` pair, for
``{"host": h, "port": p}``; the broker checks the pair against the run's allowlist (the registry's
endpoint and its ``redirect_hosts``), resolves the name and connects on the host, and passes the connected
TCP socket back with SCM_RIGHTS. So the jail reaches exactly the hosts the policy names, DNS included,
and a request for anything else is refused and recorded (tests assert on ``refused``).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Sequence

from safeload._sandbox.worker._http_rules import host_allowed

__all__ = ["Broker"]

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:.]+")
_MSG = 4096


class Broker:
    """Serves one jail run; ``child_fd`` goes into the jail, the rest stays here."""

    def __init__(self, allowed: Sequence[str], *, connect_timeout_s: float = 30.0) -> None:
        self._allowed = tuple(allowed)
        self._timeout = connect_timeout_s
        self._host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._child: socket.socket | None = child
        self.child_fd = child.fileno()
        self.refused: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._serve, name="safeload-fetch-broker", daemon=True)

    def __enter__(self) -> Broker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close_child()
        with contextlib.suppress(OSError):
            self._host.shutdown(socket.SHUT_RDWR)
        self._thread.join(self._timeout + 5)
        self._host.close()

    def close_child(self) -> None:
        """Drop the host's copy of the jail's end (once the jail has its own)."""
        if self._child is not None:
            self._child.close()
            self._child = None

    def _reply(self, body: dict[str, object], fd: int | None = None) -> None:
        data = json.dumps(body).encode()
        if fd is None:
            self._host.send(data)
        else:
            socket.send_fds(self._host, [data], [fd])

    def _serve(self) -> None:
        while True:
            try:
                msg = self._host.recv(_MSG)
            except OSError:
                return
            if not msg:
                return
            try:
                self._answer(msg)
            except OSError:
                return

    def _answer(self, msg: bytes) -> None:
        try:
            req = json.loads(msg)
            host, port = req["host"], req["port"]
            if not isinstance(host, str) or not _HOSTNAME.fullmatch(host):
                raise ValueError(host)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise ValueError(port)
        except (ValueError, KeyError, TypeError):
            self._reply({"ok": False, "error": "malformed request"})
            return
        if not host_allowed(host, port, self._allowed):
            self.refused.append((host, port))
            self._reply({"ok": False, "error": "not the registry's endpoint nor in its redirect_hosts"})
            return
        try:
            conn = socket.create_connection((host, port), timeout=self._timeout)
        except OSError as exc:
            self._reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
            return
        with conn:
            conn.setblocking(True)  # the descriptor's flags travel with it; the worker sets its own timeout
            self._reply({"ok": True}, conn.fileno())

