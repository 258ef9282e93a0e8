"""Host-side detectors for the traces a malicious payload leaves if it runs outside the jail.

A loopback TCP listener that counts connections, a counter of signals sent to the test process, a walk
that finds a secret anywhere in a loaded result (including inside stubs' arguments and state), a scan of
folders for the secret, and a view of the process table to spot workers or forked children that outlived
a load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "Listener",
    "Payload",
    "SignalCounter",
    "find_secret",
    "leftover_processes",
    "poisoned_pickle",
    "process_table",
    "secret_in_tree",
    "stubs_in",
]


class Listener:
    """A TCP listener on 127.0.0.1 that counts every connection it accepts."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="canary-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


class SignalCounter:
    """Counts deliveries of one signal to the test process (a payload that can see host processes)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.count = 0
        self._previous = signal.signal(signum, self._received)

    def _received(self, signum: int, frame: object) -> None:
        self.count += 1

    def close(self) -> None:
        signal.signal(self.signum, self._previous)


def _children(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield v
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield getattr(obj, f.name, None)
    else:
        with contextlib.suppress(TypeError):
            yield from vars(obj).values()
        for klass in type(obj).__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                with contextlib.suppress(AttributeError):
                    yield getattr(obj, name)


def _walk(obj: Any) -> Iterator[Any]:
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, (str, bytes, bytearray, int, float, complex)) or item is None:
            continue
        stack.extend(_children(item))


def _raw(item: Any) -> bytes | None:
    if isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    mod = type(item).__module__ or ""
    if mod.startswith("torch") and hasattr(item, "untyped_storage"):
        with contextlib.suppress(Exception):
            return bytes(item.detach().cpu().contiguous().view(-1).view(__import__("torch").uint8).numpy())
    if mod.startswith("numpy") and hasattr(item, "tobytes"):
        with contextlib.suppress(Exception):
            return bytes(item.tobytes())
    return None


def find_secret(obj: Any, secret: str) -> list[str]:
    """Every string, bytes value or tensor in ``obj`` (walked through stubs too) that holds ``secret``."""
    needle = secret.encode()
    return [repr(item)[:200] for item in _walk(obj) if needle in (_raw(item) or b"")]


def stubs_in(obj: Any) -> set[tuple[str, str]]:
    """``(module, name)`` of every ``safeload.Stub`` anywhere in ``obj``."""
    import safeload

    stub_type = getattr(safeload, "Stub", None)
    found: set[tuple[str, str]] = set()
    for item in _walk(obj):
        if stub_type is not None and isinstance(item, stub_type):
            found.add((str(item.module), str(item.name)))
    return found


def secret_in_tree(folder: Path, secret: str) -> list[Path]:
    """Regular files under ``folder`` whose bytes contain ``secret`` (symlinks are not followed)."""
    needle = secret.encode()
    hits: list[Path] = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as fh:
                if os.fstat(fd).st_size < (64 << 20) and needle in fh.read():
                    hits.append(path)
    return hits


@dataclasses.dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str


def process_table() -> dict[int, Proc]:
    """Every process visible in /proc: pid -> (ppid, command line)."""
    table: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry)] = Proc(int(entry), ppid, cmd.strip())
    return table


def _mentions(pid: int, marker: str) -> bool:
    """Whether the process's mounts or open files mention ``marker`` (a folder only this run uses)."""
    with contextlib.suppress(OSError):
        if marker in Path(f"/proc/{pid}/mountinfo").read_text():
            return True
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if marker in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    return True
    return False


def leftover_processes(before: dict[int, Proc], marker: str) -> list[Proc]:
    """Processes started since ``before`` that are still alive and belong to this run.

    A process belongs to this run when it descends from the test process, or when its mounts or open
    files mention ``marker`` (the jail binds the artifact and output folder from the test's own tmp folder,
    so a worker or forked child that escaped its parent still shows it).
    """
    me = os.getpid()
    now = process_table()
    mine: set[int] = {me}
    changed = True
    while changed:
        changed = False
        for proc in now.values():
            if proc.ppid in mine and proc.pid not in mine:
                mine.add(proc.pid)
                changed = True
    left: list[Proc] = []
    for proc in now.values():
        if proc.pid == me or proc.pid in before:
            continue
        if proc.pid in mine or _mentions(proc.pid, marker):
            # zombies reaped a moment later are not leftovers
            with contextlib.suppress(OSError):
                if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    left.append(proc)
    return left


class Payload:
    """Appends to ``canary`` if a real unpickler ever runs it: the trace a pickle leaves on the host."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import builtins

        return (builtins.exec, (f"open({str(self.canary)!r}, 'a').write('ran')",))


def poisoned_pickle(tensors: dict[str, Any], canary: Path) -> bytes:
    """``torch.save`` of ``tensors`` plus an ``evil`` entry that would run if unpickled in the host."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({**tensors, "evil": Payload(canary)}, buf)
    return buf.getvalue()
