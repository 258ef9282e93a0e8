"""The fetch jail holds even when the code inside it is the attacker's.

A bug in the HTTP stack that a lying registry exploits would give it the fetch worker. These tests run
hostile code in that very jail, with the connection broker's descriptor, and check what it still cannot
do: open a socket of its own, get a connection to any host but the allowed one, turn the connection it
was given into one to somewhere else (disconnect with ``AF_UNSPEC``, then connect again: refused by
the seccomp filter's ``connect`` rule), or write a file anywhere on the host but its output folder. A
second listener on 127.0.0.1 records whether anyone reached it.
"""

from __future__ import annotations

import json
import socket
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeload._jail import launcher
from safeload._jail.broker import Broker


class _Listener:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(b"hello from " + str(self.port).encode())


@pytest.fixture
def listeners() -> Iterator[tuple[_Listener, _Listener]]:
    allowed, other = _Listener(), _Listener()
    yield allowed, other
    allowed.sock.close()
    other.sock.close()


_HOSTILE = textwrap.dedent("""
    import json, os, socket, sys
    broker = socket.socket(fileno={fd})
    report = {{}}

    def ask(host, port):
        broker.send(json.dumps({{"host": host, "port": port}}).encode())
        msg, fds, _, _ = socket.recv_fds(broker, 4096, 1)
        return msg.decode(), fds

    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        report["own_socket"] = "opened"
    except OSError as e:
        report["own_socket"] = e.errno
    for name, (host, port) in {{"other": ("127.0.0.1", {other}), "lookalike": ("localhost", {allowed}),
                               "metadata": ("169.254.169.254", 80)}}.items():
        msg, fds = ask(host, port)
        report[name] = "connected" if fds else msg
    msg, fds = ask("127.0.0.1", {allowed})
    if fds:
        conn = socket.socket(fileno=fds[0])
        report["allowed"] = conn.recv(64).decode()
        # A TCP socket that is disconnected (connect with AF_UNSPEC) may be connected anew, anywhere.
        import ctypes, struct
        libc = ctypes.CDLL(None, use_errno=True)
        unspec = struct.pack("HH12x", socket.AF_UNSPEC, 0)
        report["disconnect"] = libc.connect(conn.fileno(), unspec, len(unspec)) or "disconnected"
        report["reconnect"] = conn.connect_ex(("127.0.0.1", {other})) or "connected"
    for target in {targets!r}:
        try:
            with open(target.replace("OUT", os.environ["SAFELOAD_OUT"]), "w") as fh:
                fh.write("pwned")
            report[target] = "written"
        except OSError as e:
            report[target] = e.errno
    print(json.dumps(report))
""")


def test_hostile_code_in_the_fetch_jail_reaches_only_the_allowed_host(
    tmp_path: Path, listeners: tuple[_Listener, _Listener], every_jail_tier: str
) -> None:
    allowed, other = listeners
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o777)
    targets = [str(victim / "x"), "/tmp/safeload-fetch-pwned", "/root/.bashrc", "/etc/cron.d/x", "OUT/ok"]
    with Broker([f"127.0.0.1:{allowed.port}"]) as broker:
        code = _HOSTILE.format(fd=broker.child_fd, other=other.port, allowed=allowed.port, targets=targets)
        out = tmp_path / "out"
        out.mkdir()
        run = launcher._run_python_in_jail(code, output_dir=out, inherit=(broker.child_fd,))
        refused = list(broker.refused)
    assert run.returncode == 0, run.stderr
    assert run.tier == every_jail_tier
    report = json.loads(run.stdout)
    assert report["own_socket"] != "opened"
    assert report["allowed"] == f"hello from {allowed.port}"
    for name in ("other", "lookalike", "metadata"):
        assert "not the registry" in report[name], report
    assert report["disconnect"] != "disconnected" and report["reconnect"] != "connected", report
    assert other.accepted == 0, "the jail reached a host that is not allowed"
    assert allowed.accepted == 1
    assert ("127.0.0.1", other.port) in refused
    for path in (targets[0], *targets[2:-1]):
        assert report[path] != "written", path
    # The jail's /tmp is a tmpfs of its own (or, without namespaces, out of reach): nothing on the host.
    assert list(victim.iterdir()) == []
    assert not Path("/tmp/safeload-fetch-pwned").exists()
    assert report["OUT/ok"] == "written" and (out / "ok").read_text() == "pwned"
