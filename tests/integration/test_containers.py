"""safeload inside real podman containers, in the configurations users run it in.

Each configuration (``tests.helpers.containers.CONFIGS``) but the last takes something the full jail
needs: a fresh ``/proc``, new user namespaces, root, a writable root filesystem, the host's ids; the last
takes nothing. Whatever jail safeload can build there, the same three promises must hold: a pickle
checkpoint loads, a safetensors file loads, and a pickle payload (inert and in execute mode) leaves no
trace in a host folder the container can write. A fourth test per configuration checks the container is
the one intended, so a pass elsewhere means something.

The facts expected of each configuration live in ``EXPECTED``, one line per configuration.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.canary import poisoned_pickle
from tests.helpers.containers import CONFIGS, ContainerConfig, Podman, podman_session

pytestmark = pytest.mark.slow

EPERM = "Operation not permitted"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Expected:
    """What the container's process sees: its ids, its uid map (the host's "0 0 4294967295" when not
    remapped), whether ``unshare -U`` fails and with what message, the errno of ``clone`` asking for a new
    user namespace, how writing /etc fails (None: each works), and whether the runtime covers parts of
    /proc (masked files, read-only /proc/sys)."""

    uid: int = 0
    gid: int = 0
    uid_map: tuple[int, int, int] = (0, 0, 4294967295)
    unshare_error: str | None = None
    clone_newuser_error: str | None = None
    etc_error: str | None = None
    proc_masked: bool = True


EXPECTED: dict[str, Expected] = {
    "podman-default": Expected(),
    "docker-seccomp": Expected(unshare_error=EPERM, clone_newuser_error="EPERM"),
    "user-nobody": Expected(uid=65534, gid=65534, etc_error="EACCES"),
    "read-only-root": Expected(etc_error="EROFS"),
    "uid-mapped": Expected(uid_map=(0, 200000, 65536)),
    "unmasked-unconfined": Expected(proc_masked=False),
}

# Runs in the container: ``step`` records each step's value or its error, and the last line of output
# carries them all, so one failing step neither hides the others nor loses its message.
_PRELUDE = r"""
import json, traceback
results = {}
def step(name, fn):
    try:
        results[name] = {"value": fn()}
    except BaseException as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]}
"""
_EPILOGUE = '\nprint("RESULTS " + json.dumps(results))\n'


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    yield from podman_session()


@pytest.fixture(params=CONFIGS, ids=[c.name for c in CONFIGS])
def config(request: pytest.FixtureRequest) -> ContainerConfig:
    cfg: ContainerConfig = request.param
    return cfg


@pytest.fixture
def expected(config: ContainerConfig) -> Expected:
    return EXPECTED[config.name]


@pytest.fixture
def exchange() -> Iterator[Path]:
    """A host folder under /tmp that every id may enter (uid-mapped containers reach it as "other"),
    with ``artifacts`` (read-only in the container) and ``shared`` (writable by anyone)."""
    root = Path(tempfile.mkdtemp(prefix="safeload-containers-", dir="/tmp"))
    root.chmod(0o755)
    (root / "artifacts").mkdir(mode=0o755)
    (root / "shared").mkdir()
    (root / "shared").chmod(0o777)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _mounts(exchange: Path) -> dict[Path | str, tuple[str, bool]]:
    return {exchange / "artifacts": ("/artifacts", True), exchange / "shared": ("/hostshared", False)}


def _steps(podman: Podman, config: ContainerConfig, body: str, exchange: Path) -> dict[str, Any]:
    done = podman.run(config, _PRELUDE + body + _EPILOGUE, mounts=_mounts(exchange))
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert done.returncode == 0 and lines, (
        f"{config.name}: container exited {done.returncode}\nstdout:\n{done.stdout[-4000:]}\n"
        f"stderr:\n{done.stderr[-4000:]}")
    results: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULTS "))
    return results


def _value(results: dict[str, Any], name: str, config: ContainerConfig) -> Any:
    result = results[name]
    assert "error" not in result, f"{config.name}: {name} failed: {result['error']}\n{result['trace']}"
    return result["value"]


def _publish(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o644)
    return path


def test_the_container_is_configured_as_intended(podman: Podman, config: ContainerConfig,
                                                 expected: Expected, exchange: Path) -> None:
    body = r"""
import errno, os, subprocess
from pathlib import Path
step("uid", lambda: [os.getuid(), os.getgid()])
step("uid_map", lambda: [int(x) for x in Path("/proc/self/uid_map").read_text().split()])
step("gid_map", lambda: [int(x) for x in Path("/proc/self/gid_map").read_text().split()])
step("seccomp", lambda: [l.split()[1] for l in Path("/proc/self/status").read_text().splitlines()
                         if l.startswith("Seccomp:")][0])
def unshare():
    done = subprocess.run(["unshare", "-U", "true"], capture_output=True, text=True)
    return [done.returncode, done.stderr.strip()]
step("unshare", unshare)
def clone_newuser():
    import ctypes, platform
    number = {"x86_64": 56, "aarch64": 220}.get(platform.machine())
    if number is None:
        return "unknown"
    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.syscall(number, 0x10000000 | 17, 0, 0, 0, 0)  # CLONE_NEWUSER | SIGCHLD, no new stack: a fork
    if pid == 0:
        libc._exit(0)
    if pid < 0:
        return errno.errorcode[ctypes.get_errno()]
    os.waitpid(pid, 0)
    return None
step("clone_newuser", clone_newuser)
def write(path):
    try:
        Path(path).write_text("probe")
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return None
step("etc", lambda: write("/etc/safeload-probe"))
step("tmp", lambda: write("/tmp/safeload-probe"))
step("home", lambda: write(os.path.expanduser("~/safeload-probe")))
step("shared", lambda: write("/hostshared/reachable"))
step("network", lambda: sorted(os.listdir("/sys/class/net")))
step("proc_mounts", lambda: sorted(l.split()[4] for l in Path("/proc/self/mountinfo").read_text().splitlines()
                                   if l.split()[4].startswith("/proc/")))
"""
    results = _steps(podman, config, body, exchange)
    assert _value(results, "uid", config) == [expected.uid, expected.gid]
    assert tuple(_value(results, "uid_map", config)) == expected.uid_map
    assert tuple(_value(results, "gid_map", config)) == expected.uid_map
    assert _value(results, "seccomp", config) == ("0" if config.seccomp == "unconfined" else "2")
    status, message = _value(results, "unshare", config)
    if expected.unshare_error is None:
        assert status == 0, message
    else:
        assert status != 0 and expected.unshare_error in message, message
    assert _value(results, "clone_newuser", config) in (expected.clone_newuser_error, "unknown")
    assert _value(results, "etc", config) == expected.etc_error
    assert _value(results, "tmp", config) is None
    assert _value(results, "home", config) is None
    assert _value(results, "shared", config) is None
    assert (exchange / "shared" / "reachable").read_text() == "probe"
    assert _value(results, "network", config) == ["lo"]
    assert bool(_value(results, "proc_mounts", config)) == expected.proc_masked, results["proc_mounts"]


def test_a_pickle_checkpoint_loads(podman: Podman, config: ContainerConfig, exchange: Path) -> None:
    body = r"""
import torch, safeload
def load():
    torch.save({"w": torch.arange(4.0), "h": torch.ones(2, 3, dtype=torch.float16)}, "/tmp/x.pt")
    obj = safeload.load("/tmp/x.pt")
    return {k: [str(v.dtype), list(v.shape), v.tolist()] for k, v in sorted(obj.items())}
step("load", load)
"""
    results = _steps(podman, config, body, exchange)
    assert _value(results, "load", config) == {
        "h": ["torch.float16", [2, 3], [[1.0] * 3] * 2],
        "w": ["torch.float32", [4], [0.0, 1.0, 2.0, 3.0]],
    }


def test_a_safetensors_file_loads(podman: Podman, config: ContainerConfig, exchange: Path) -> None:
    tensors = {"w": torch.arange(6, dtype=torch.int32).reshape(2, 3), "b": torch.full((3,), 0.5)}
    save_file(tensors, str(exchange / "artifacts" / "model.safetensors"))
    (exchange / "artifacts" / "model.safetensors").chmod(0o644)
    body = r"""
import safeload
def load():
    obj = safeload.load("/artifacts/model.safetensors")
    return {k: [str(v.dtype), list(v.shape), v.tolist()] for k, v in sorted(obj.items())}
step("load", load)
"""
    results = _steps(podman, config, body, exchange)
    assert _value(results, "load", config) == {
        "b": ["torch.float32", [3], [0.5, 0.5, 0.5]],
        "w": ["torch.int32", [2, 3], [[0, 1, 2], [3, 4, 5]]],
    }


class _Touch:
    """Runs ``touch PATH`` when unpickled; where PATH is out of reach it fails quietly, so a load that runs
    it still completes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.path}",)


def test_a_pickle_payload_leaves_no_trace(podman: Podman, config: ContainerConfig, exchange: Path) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0), "evil": _Touch("/hostshared/PWNED")}, buf)
    _publish(exchange / "artifacts" / "touch.pt", buf.getvalue())
    _publish(exchange / "artifacts" / "canary.pt",
             poisoned_pickle({"w": torch.arange(4.0)}, Path("/hostshared/PWNED")))
    body = r"""
import os
from pathlib import Path
import safeload
Path("/hostshared/reachable").write_text("yes")
def inert(name):
    obj = safeload.load(f"/artifacts/{name}")
    evil = obj["evil"]
    return {"w": obj["w"].tolist(), "evil": [type(evil).__name__, evil.module, evil.name],
            "pwned": os.path.exists("/hostshared/PWNED")}
def execute():
    obj = safeload.load("/artifacts/touch.pt", unpickler="execute", weights_only=False)
    return {"w": obj["w"].tolist(), "pwned": os.path.exists("/hostshared/PWNED")}
step("inert", lambda: inert("touch.pt"))
step("inert canary", lambda: inert("canary.pt"))
step("execute", execute)
"""
    results = _steps(podman, config, body, exchange)
    pwned = exchange / "shared" / "PWNED"
    assert (exchange / "shared" / "reachable").read_text() == "yes", "the container cannot write there"
    assert not pwned.exists(), f"{config.name}: the payload ran: {results}"
    w = [0.0, 1.0, 2.0, 3.0]
    assert _value(results, "inert", config) == {"w": w, "evil": ["Stub", os.system.__module__, "system"],
                                                "pwned": False}
    assert _value(results, "inert canary", config) == {"w": w, "evil": ["Stub", "builtins", "exec"],
                                                       "pwned": False}
    assert _value(results, "execute", config) == {"w": w, "pwned": False}
    assert not pwned.exists(), f"{config.name}: the payload ran: {results}"
