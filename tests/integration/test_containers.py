"""safeload inside real podman containers, in the configurations users run it in.

Each configuration (``tests.helpers.containers.CONFIGS``) but the last takes something the full jail
needs: a fresh ``/proc``, new user namespaces, root, a writable root filesystem, the host's ids; the last
takes nothing. Whatever jail safeload can build there, the same three promises must hold: a pickle
checkpoint loads, a safetensors file loads, and a pickle payload (inert and in execute mode) leaves no
trace in a host folder the container can write. A fourth test per configuration checks the container is
the one intended, so a pass elsewhere means something; a fifth that the jail is the tier measured there
and that the audit log names it.

The store works in each configuration too: ``safeload prefetch --all`` from a ``directory`` registry
(converting a ``pytorch_model.bin`` in the jail) followed by a load through ``safeload.transformers``; a
prefetch from a Hub-compatible server (olah on the host's loopback, the container sharing the host's
network) where the fetch jail differs; and the image pattern: root prefetches at build time, then a
non-root user on a read-only root filesystem loads from the store mounted read-only, changing nothing.

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
from typing import Any, Literal

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.canary import poisoned_pickle
from tests.helpers.containers import CONFIGS, ContainerConfig, Podman, podman_session
from tests.helpers.hubserver import HubServer, tiny_bert_files
from tests.helpers.models import save_model, tiny_gpt2
from tests.helpers.trust import folder_pins, pins, sha256_of, write_policy

pytestmark = pytest.mark.slow

EPERM = "Operation not permitted"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Expected:
    """What the container's process sees: its ids, its uid map (the host's "0 0 4294967295" when not
    remapped), whether ``unshare -U`` fails and with what message, the errno of ``clone`` asking for a new
    user namespace, how writing /etc fails (None: each works), whether the runtime covers parts of
    /proc (masked files, read-only /proc/sys), and the jail tier safeload picks there."""

    uid: int = 0
    gid: int = 0
    uid_map: tuple[int, int, int] = (0, 0, 4294967295)
    unshare_error: str | None = None
    clone_newuser_error: str | None = None
    etc_error: str | None = None
    proc_masked: bool = True
    tier: str = "namespaces"


EXPECTED: dict[str, Expected] = {
    "podman-default": Expected(),
    "docker-seccomp": Expected(unshare_error=EPERM, clone_newuser_error="EPERM", tier="landlock"),
    "user-nobody": Expected(uid=65534, gid=65534, etc_error="EACCES"),
    "read-only-root": Expected(etc_error="EROFS"),
    "uid-mapped": Expected(uid_map=(0, 200000, 65536)),
    "docker-seccomp-sys-admin": Expected(),
    "seccomp-unconfined": Expected(),
    "unmasked-unconfined": Expected(proc_masked=False, tier="full"),
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


def _steps(podman: Podman, config: ContainerConfig, body: str, exchange: Path, *,
           mounts: dict[Path | str, tuple[str, bool]] | None = None, env: dict[str, str] | None = None,
           network: Literal["none", "host"] = "none") -> dict[str, Any]:
    done = podman.run(config, _PRELUDE + body + _EPILOGUE, mounts={**_mounts(exchange), **(mounts or {})},
                      env=env, network=network)
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


def test_the_jail_is_the_tier_measured_and_the_audit_log_names_it(
        podman: Podman, config: ContainerConfig, expected: Expected, exchange: Path) -> None:
    tensors = {"w": torch.arange(3.0)}
    save_file(tensors, str(exchange / "artifacts" / "t.safetensors"))
    (exchange / "artifacts" / "t.safetensors").chmod(0o644)
    write_policy(exchange / "artifacts" / "trust.toml", store=Path("/tmp/store"),
                 audit_log=Path("/tmp/audit.jsonl"),
                 files={"/artifacts/t.safetensors": sha256_of(exchange / "artifacts" / "t.safetensors")})
    (exchange / "artifacts" / "trust.toml").chmod(0o644)
    body = r"""
import json
from pathlib import Path
import safeload
from safeload._jail.launcher import jail_tier
step("tier", jail_tier)
step("load", lambda: safeload.load("/artifacts/t.safetensors", policy="/artifacts/trust.toml")["w"].tolist())
step("audit", lambda: [json.loads(l)["jail"] for l in Path("/tmp/audit.jsonl").read_text().splitlines()])
"""
    results = _steps(podman, config, body, exchange)
    assert _value(results, "tier", config) == expected.tier
    assert _value(results, "load", config) == [0.0, 1.0, 2.0]
    audit = _value(results, "audit", config)
    assert audit and set(audit) == {expected.tier}, audit


# --- the store: prefetch, then loads through safeload.transformers ---------------------------------------

MODEL = "acme/tiny-gpt2"

# Runs in the container: ``safeload prefetch --all --policy /policy/trust.toml`` (the command an image
# build runs), in the container's process so that the load after it does not import transformers again.
_PREFETCH = r"""
import contextlib, io, runpy, sys
def prefetch():
    sys.argv = ["safeload", "prefetch", "--all", "--policy", "/policy/trust.toml"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_module("safeload", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"prefetch exited {exc.code}: {out.getvalue()[-3000:]}") from None
    return out.getvalue()
step("prefetch", prefetch)
"""
# Loads a model through safeload.transformers and reports each parameter's checksum.
_LOAD = r"""
def load(name):
    from safeload.transformers import AutoModel
    model = AutoModel.from_pretrained(name)
    return {k: float(v.detach().double().sum()) for k, v in model.named_parameters()}
"""


@dataclasses.dataclass(frozen=True)
class Registry:
    """A ``directory`` registry on the host holding MODEL as ``pytorch_model.bin``, its pins, and each
    parameter's checksum as the bare model (``AutoModel``) names it."""

    root: Path
    pins: dict[str, str]
    sums: dict[str, float]


def _world_readable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    root = Path(tempfile.mkdtemp(prefix="safeload-containers-registry-", dir="/tmp"))
    model = tiny_gpt2()
    folder = save_model(model, root / MODEL, "bin")
    assert (folder / "pytorch_model.bin").is_file()
    _world_readable(root)
    sums = {k.removeprefix("transformer."): float(v.detach().double().sum())
            for k, v in model.named_parameters() if k.startswith("transformer.")}
    try:
        yield Registry(root=root, pins=folder_pins(folder), sums=sums)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _host_uid(config: ContainerConfig) -> int:
    """The host uid the container's process runs as."""
    if config.uidmap is None:
        return config.uid
    inside, host, _count = (int(x) for x in config.uidmap.split(":"))
    return host + config.uid - inside


def _store_folder(exchange: Path, config: ContainerConfig) -> Path:
    """A host folder the container's user owns (the store's ownership rule), for /data."""
    data = exchange / "data"
    data.mkdir(mode=0o755)
    os.chown(data, _host_uid(config), _host_uid(config))
    return data


def _directory_policy(exchange: Path, registry: Registry) -> Path:
    policy = write_policy(exchange / "policy" / "trust.toml", store=Path("/data/store"),
                          registries={"local": {"kind": "directory", "path": "/registry"}},
                          models={MODEL: {"registry": "local", "files": registry.pins}})
    _world_readable(exchange / "policy")
    return policy


def test_a_prefetch_from_a_directory_registry_then_a_load(
        podman: Podman, config: ContainerConfig, exchange: Path, registry: Registry) -> None:
    _directory_policy(exchange, registry)
    data = _store_folder(exchange, config)
    mounts: dict[Path | str, tuple[str, bool]] = {
        registry.root: ("/registry", True), exchange / "policy": ("/policy", True), data: ("/data", False)}
    body = _PREFETCH + _LOAD + f"step('load', lambda: load({MODEL!r}))\n"
    results = _steps(podman, config, body, exchange, mounts=mounts,
                     env={"SAFELOAD_POLICY": "/policy/trust.toml"})
    report = _value(results, "prefetch", config)
    assert "prefetched" in report and MODEL in report and "model.safetensors" in report, report
    assert _value(results, "load", config) == registry.sums
    converted = [p.name for p in (data / "store").rglob("*.safetensors")]
    assert converted, f"{config.name}: no converted safetensors in the store"


def _listing(root: Path) -> list[tuple[str, int, int, int, int, str]]:
    """Every entry under ``root``: path, mode, owner, size, mtime and (files) content hash."""
    out = []
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        digest = sha256_of(path) if path.is_file() and not path.is_symlink() else ""
        out.append((path.relative_to(root).as_posix(), st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns,
                    digest))
    return out


def test_the_image_pattern_root_prefetches_and_nobody_loads_from_a_read_only_store(
        podman: Podman, exchange: Path, registry: Registry) -> None:
    build = next(c for c in CONFIGS if c.name == "podman-default")
    nobody = next(c for c in CONFIGS if c.name == "user-nobody")
    runtime = dataclasses.replace(nobody, name="user-nobody-read-only", read_only=True)
    _directory_policy(exchange, registry)
    data = _store_folder(exchange, build)
    mounts: dict[Path | str, tuple[str, bool]] = {
        registry.root: ("/registry", True), exchange / "policy": ("/policy", True), data: ("/data", False)}
    results = _steps(podman, build, _PREFETCH, exchange, mounts=mounts)
    report = _value(results, "prefetch", build)
    assert "prefetched" in report and MODEL in report, report
    before = _listing(data)
    # no registry at run time: the store alone must serve the load
    mounts = {exchange / "policy": ("/policy", True), data: ("/data", True)}
    body = _LOAD + f"""
import os
step("uid", os.getuid)
step("load", lambda: load({MODEL!r}))
"""
    results = _steps(podman, runtime, body, exchange, mounts=mounts,
                     env={"SAFELOAD_POLICY": "/policy/trust.toml"})
    assert _value(results, "uid", runtime) == 65534
    assert _value(results, "load", runtime) == registry.sums
    assert _listing(data) == before


HUB_REPO = "containers/tiny-bert"


@dataclasses.dataclass(frozen=True)
class Hub:
    server: HubServer
    sha: str
    pins: dict[str, str]


@pytest.fixture(scope="module")
def container_hub() -> Iterator[Hub]:
    """olah on the host's loopback with one small repository (safetensors, config, tokenizer)."""
    root = Path(tempfile.mkdtemp(prefix="safeload-containers-hub-", dir="/tmp"))
    server = HubServer.start(root)
    try:
        files = tiny_bert_files()
        sha = server.add_repo(HUB_REPO, files)
        yield Hub(server=server, sha=sha, pins=pins(files))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("hub_config", [c for c in CONFIGS if c.name in ("podman-default", "docker-seccomp")],
                         ids=lambda c: c.name)
def test_a_prefetch_from_a_hub_compatible_server(
        podman: Podman, hub_config: ContainerConfig, exchange: Path, container_hub: Hub) -> None:
    config = hub_config
    policy = write_policy(
        exchange / "policy" / "trust.toml", store=Path("/data/store"),
        registries={"hub": {"kind": "huggingface", "endpoint": container_hub.server.endpoint}},
        models={"acme/tiny-bert": {"registry": "hub", "repo": HUB_REPO, "revision": container_hub.sha,
                                   "files": container_hub.pins}})
    _world_readable(policy.parent)
    data = _store_folder(exchange, config)
    mounts: dict[Path | str, tuple[str, bool]] = {
        exchange / "policy": ("/policy", True), data: ("/data", False)}
    body = _PREFETCH + r"""
from safeload._jail.launcher import jail_tier
step("tier", jail_tier)
"""
    results = _steps(podman, config, body, exchange, mounts=mounts, network="host",
                     env={"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    report = _value(results, "prefetch", config)
    assert "prefetched" in report and "acme/tiny-bert" in report, report
    assert _value(results, "tier", config) == EXPECTED[config.name].tier
    folder = data / "store" / "models" / "hub" / HUB_REPO / container_hub.sha
    got = {p.relative_to(folder).as_posix(): sha256_of(p) for p in folder.rglob("*") if p.is_file()}
    assert got == container_hub.pins
