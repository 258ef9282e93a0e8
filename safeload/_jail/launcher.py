"""Starts the worker inside a bubblewrap jail and waits for it, within limits.

The jail (DESIGN.md, "Sandbox"): new user, mount, pid, network, ipc, uts and cgroup namespaces with
further user namespaces disabled, ``--die-with-parent``, ``--new-session``, no capabilities, an empty
environment, a root that is an empty read-only tmpfs holding only read-only binds of ``/usr``, the
Python installation and the worker's source, a size-capped ``/tmp``, a read-only ``/dev`` with the
usual device nodes, a fresh ``/proc`` with ``/proc/sys`` bound read-only over it, the artifact at
``/in/artifact`` and one writable folder, ``/out``. The worker is pid 1 of its pid namespace, so when it
exits or is killed the kernel kills everything it started, however it daemonised.

On top: the seccomp filter of :mod:`safeload._jail.seccomp` (passed by memfd), the rlimits of
:mod:`safeload._jail.limits` (set by ``prlimit`` right before bubblewrap starts), the privilege drop of
:mod:`safeload._jail.privileges` when started as root, a wall-clock timeout that SIGKILLs bubblewrap's process
group and the jail's pid 1 (through a pidfd, so never a recycled pid), and a cap on the output folder
checked while the worker runs and after it exits.

The launcher never falls back to anything outside the jail: each failure is a typed ``SandboxError``.

Start-up, measured here (2 cores, Debian 12, bubblewrap 0.8, as root, with other jobs keeping the load
average near 7; ``tests/integration/test_jail.py::test_startup_latency``, median of 20): a no-op
standard-library payload is up and has answered in 38-83 ms, against 20-49 ms for a bare
``python -I -S -B`` start measured alongside. Of the difference, bubblewrap's namespace and mount set-up
is about 15-20 ms, the ``setpriv``/``prlimit`` execs about 10 ms and the launcher's own work (drawing
the run's uid and making its staging folder, 1.5-3 ms; pipes, pidfds) the rest. The real worker's own
imports (``json``, ``re``, ``dataclasses``) come on top of that.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import importlib.util
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from safeload._sandbox.worker._confine import EXIT_CONFINE
from safeload.errors import SandboxError, SandboxTimeoutError, SandboxUnavailableError

from . import tiers as _tiers
from .limits import TIMEOUT_KEY, Limits, limit_error, output_error, prlimit_args
from .memfd import sealed_memfd
from .privileges import (
    JAIL_USER,
    JailIds,
    claim_staging,
    drop_privileges,
    jail_interpreter,
    reachable,
    readable_input,
)
from .seccomp import build_filter, native_arch, seccomp_memfd
from .tiers import TIERS, Tier

__all__ = ["Limits", "Tier", "WorkerRun", "jail_tier", "prepare", "run_worker"]

# Picks one tier for tests and benchmarks; never one weaker than the policy's floor.
_TIER_ENV = "SAFELOAD_JAIL"

# The worker runs in the jail by path, as the top-level package ``worker`` of its own sys.path, so the
# host never needs an import name for it beyond ``safeload``.
_WORKER_SRC = (Path(__file__).resolve().parent.parent / "_sandbox" / "worker").resolve()
_JAIL_WORKER_ROOT = "/opt/safeload"
_STDERR_TAIL = 64 * 1024
_STDOUT_CAP = 1 << 20
_POLL_S = 0.1
# Paths inside the jail, whose /tmp is its own tmpfs.
_JAIL_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}  # noqa: S108
_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class WorkerRun:
    """What a finished worker left behind (its output files are in the output folder)."""

    returncode: int
    stderr: str
    elapsed_s: float
    stdout: str = ""
    tier: Tier = "full"


@functools.cache
def _filter_program(solo: bool = False) -> bytes:
    return build_filter(native_arch(), solo=solo)


def jail_tier(floor: Tier = "landlock") -> Tier:
    """The jail tier runs get here: the strongest this host offers at or above ``floor``
    (``$SAFELOAD_JAIL`` may name a weaker one than the strongest, never one below ``floor``).

    Raises:
        SandboxUnavailableError: no tier at or above ``floor`` runs here, or ``$SAFELOAD_JAIL`` names
            one that does not run or is below ``floor``.
    """
    support = _tiers.support()
    chosen = support.choose(floor)
    wanted = os.environ.get(_TIER_ENV, "")
    if not wanted:
        return chosen
    tier = next((t for t in TIERS if t == wanted), None)
    if tier is None:
        raise SandboxUnavailableError(
            f"${_TIER_ENV}={wanted!r} names no jail tier; use one of {', '.join(TIERS)}"
        )
    if TIERS.index(tier) > TIERS.index(floor):
        raise SandboxUnavailableError(
            f"${_TIER_ENV}={tier!r} is weaker than the policy accepts ([sandbox] weakest_jail = {floor!r})"
        )
    check = support.check(tier)
    if not check.available:
        raise SandboxUnavailableError(f"${_TIER_ENV}={tier!r} cannot run here: {check.detail} ({check.fix})")
    return tier


@functools.cache
def _util_linux(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SandboxUnavailableError(
            f"util-linux's {name}, which the launcher uses to drop privileges and set resource limits, "
            "is missing; install it with: apt-get install -y util-linux"
        )
    return path


def run_worker(
    input_fd: int,
    output_dir: Path,
    *,
    mode: Literal["inert", "execute", "skops", "fetch", "unpack"] = "inert",
    limits: Limits = _DEFAULT_LIMITS,
    args: Sequence[str] = (),
    inherit: Sequence[int] = (),
    on_output: Callable[[int], None] | None = None,
) -> WorkerRun:
    """Run the worker on the artifact open at ``input_fd``, writing into ``output_dir``.

    ``mode="skops"`` unpickles a scikit-learn pickle for real and writes it as skops
    (:mod:`safeload._sandbox.worker._skops`), in the execute-mode jail. ``mode="fetch"`` runs the download
    worker
    (:mod:`safeload._jail.fetch` prepares its job) and ``mode="unpack"`` the tar layer unpacker
    (:mod:`safeload._jail.unpack`) in the same jail as the inert one.
    ``inherit`` are further descriptors the jail keeps under their numbers (the fetch's connection broker,
    the unpack job); ``on_output`` is called with the output folder's size in bytes about ten times a
    second while the worker runs (progress bars).

    Inside the jail the artifact is ``/in/artifact`` (read-only; it may be a symlink to the inherited
    descriptor, so open it without ``O_NOFOLLOW``) and the output folder is ``/out``. ``output_dir`` is
    created by the caller and should be empty; when the launcher runs as root the worker writes to a
    staging folder whose entries (``error.json`` of a failed run too) are moved into ``output_dir`` when
    the run ends without the launcher raising.

    Raises:
        SandboxUnavailableError: bubblewrap, user namespaces, prlimit or a seccomp table for this
            architecture are missing, or the jail's uid cannot reach its interpreter.
        SandboxTimeoutError: the worker ran past ``limits.timeout_s`` (it was killed with everything it
            started).
        SandboxLimitError: the worker hit its memory, CPU, file size or output limit.
        SandboxError: bubblewrap could not set up the jail or could not be started.
    """
    _compile_worker()
    # skops mode unpickles for real, as execute mode does: the same jail, with site-packages bound.
    jail: Literal["inert", "execute"] = "execute" if mode in ("execute", "skops") else "inert"
    # A direct call rather than runpy, whose own imports (importlib.util, contextlib, ...) add several
    # milliseconds to every start.
    entry = "from worker.__main__ import main; sys.exit(main(argv))"
    return _launch(
        entry, ["--mode", mode, *args], input_fd, output_dir, jail, limits,
        capture=False, inherit=inherit, on_output=on_output,
    )


def _run_python_in_jail(
    code: str,
    *,
    input_fd: int | None = None,
    output_dir: Path | None = None,
    limits: Limits = _DEFAULT_LIMITS,
    mode: Literal["inert", "execute"] = "inert",
    inherit: Sequence[int] = (),
) -> WorkerRun:
    """Run ``code`` with the jail's interpreter in the very jail :func:`run_worker` builds (tests only).

    Its standard output comes back in ``WorkerRun.stdout``; the artifact is at ``os.environ["SAFELOAD_IN"]``
    (a path, or ``fd:N``) and the output folder at ``os.environ["SAFELOAD_OUT"]``.
    """
    entry = f"del argv; exec(compile({code!r}, '<jail>', 'exec'), {{'__name__': '__main__'}})"
    with contextlib.ExitStack() as stack:
        if output_dir is None:
            output_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="safeload-test-")))
        return _launch(entry, [], input_fd, output_dir, mode, limits, capture=True, inherit=inherit)


def _site_dirs() -> list[str]:
    """Where execute mode's worker finds torch: this interpreter's site-packages, plus the folder torch is
    actually installed in when that is elsewhere (a ``PYTHONPATH`` entry, a user site)."""
    paths = sysconfig.get_paths()
    dirs = [paths["purelib"], paths["platlib"]]
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    return list(dict.fromkeys(dirs))


@functools.cache
def _compile_worker() -> None:
    """Bring the worker's bytecode up to date once per process.

    The jail runs with ``-B`` on a read-only bind, so it can use ``__pycache__`` but never write it;
    without fresh bytecode every start compiles the worker from source.
    """
    import compileall

    with contextlib.suppress(OSError):
        compileall.compile_dir(str(_WORKER_SRC), quiet=2)


def prepare(mode: Literal["inert", "execute"] = "inert") -> None:
    """Run the launcher's one-time checks now instead of in the first :func:`run_worker` of the process.

    A caller that knows a jailed load is coming (a model with pickle weights, while its files are still
    being verified) calls this on a spare thread: the checks (bubblewrap's user-namespace probe, the
    seccomp program, the interpreter's reachability, fresh worker bytecode) then overlap that work. Safe
    to call any number of times and from several threads.

    Raises:
        SandboxUnavailableError: as :func:`run_worker` would on its first call.
    """
    _compile_worker()
    tier = jail_tier()
    _filter_program(tier == "landlock")
    _util_linux("prlimit")
    drop = drop_privileges()
    if drop:
        _util_linux("setpriv")
    _checked_binds(mode, drop)


@functools.cache
def _checked_binds(mode: str, drop: bool) -> tuple[str, str]:
    """The jail's interpreter and prefix, once the jail's uid is known to reach every bind source.

    Checked for a stranger (only the "other" bits count), which every run's fresh uid is, so the answer
    holds for every later run.
    """
    python, prefix = jail_interpreter()
    binds = [prefix, str(_WORKER_SRC)] + (_site_dirs() if mode == "execute" else [])
    if drop:
        for path in binds:
            if not reachable(path):
                raise SandboxUnavailableError(
                    f"the jail runs as {JAIL_USER}, which cannot reach {path}; make its parent folders "
                    "searchable by every user (chmod o+x) or install safeload somewhere they are"
                )
    return python, prefix


def _launch(
    entry: str,
    worker_args: list[str],
    input_fd: int | None,
    output_dir: Path,
    mode: Literal["inert", "execute"],
    limits: Limits,
    *,
    capture: bool,
    inherit: Sequence[int] = (),
    on_output: Callable[[int], None] | None = None,
) -> WorkerRun:
    """Start ``entry`` (Python run after the jail's ``sys.path`` is set, with the worker's arguments in
    ``argv``) in the tier this host offers, and supervise it to the end."""
    tier = jail_tier(limits.weakest_jail)
    program = _filter_program(tier == "landlock")
    prlimit = _util_linux("prlimit")
    drop = drop_privileges()
    python, prefix = _checked_binds(mode, drop)

    with contextlib.ExitStack() as stack:
        fds: list[int] = []

        def own(fd: int) -> int:
            stack.callback(os.close, fd)
            fds.append(fd)
            return fd

        cmd = []
        ids: JailIds | None = None
        stage_fd = -1
        if drop:
            ids, jail_out, stage_fd = claim_staging()
            stack.callback(os.close, stage_fd)
            stack.callback(_remove_stage, jail_out, stage_fd)
            # setpriv rather than Popen(user=...): Python forks instead of vforking when asked to change
            # ids, and forking a caller that has torch loaded costs tens of milliseconds.
            cmd += [
                _util_linux("setpriv"), f"--reuid={ids.uid}", f"--regid={ids.gid}", "--clear-groups", "--",
            ]
        else:
            jail_out = Path(os.path.realpath(output_dir))
        mapped = os.fstat(input_fd).st_size if input_fd is not None else 0
        cmd += [prlimit, *prlimit_args(limits, execute=mode == "execute", mapped_bytes=mapped), "--"]
        seccomp_fd = own(seccomp_memfd(program))
        info_r, info_w = os.pipe()
        stack.callback(_close_quietly, info_r)
        source = ""
        binds: list[str] = []
        if input_fd is not None and tier != "full":
            # No /proc in these jails to reopen a descriptor through: the worker reads the one it
            # inherits, which is read-only whatever the file's mode.
            source = f"fd:{own(_jail_readable_copy(input_fd, ids))}"
        elif input_fd is not None:
            source = "/in/artifact"
            binds += ["--dir", "/in"]
            if not drop and _has_path(input_fd):
                binds += ["--ro-bind-fd", str(own(os.dup(input_fd))), source]
            else:
                # bubblewrap resolves a bound file's path (as the jail's uid), and a memfd has none; an
                # inherited descriptor reopened through /proc needs no path, only access to the inode.
                binds += ["--symlink", f"/proc/self/fd/{own(_jail_readable_copy(input_fd, ids))}", source]
        out_path = str(jail_out) if tier == "landlock" else "/out"
        args = [*worker_args, "--out", out_path] + (["--in", source] if source else [])
        program_args = ["-c", _boot(tier, mode, entry)]
        if tier == "landlock":
            confine = _confine_options(prefix, mode, out_path, seccomp_fd)
            cmd += [python, "-I", "-S", "-B", *program_args, *confine]
        else:
            cmd += _bubblewrap(tier, prefix, mode, jail_out, limits, binds)
            cmd += ["--seccomp", str(seccomp_fd), "--info-fd", str(info_w)]
            for key, value in {**_JAIL_ENV, "SAFELOAD_IN": source, "SAFELOAD_OUT": out_path}.items():
                cmd += ["--setenv", key, value]
            cmd += ["--", python, "-I", "-S", "-B", *program_args]
        cmd += args
        env = {"LC_ALL": "C"}
        if tier == "landlock":
            env = {**_JAIL_ENV, "HOME": "/nonexistent", "SAFELOAD_IN": source, "SAFELOAD_OUT": out_path}

        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(*fds, *inherit, info_w), start_new_session=True, env=env, cwd="/",
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"could not start the {tier} jail: {exc}") from exc
        finally:
            os.close(info_w)
        with proc:
            out, err, how = _supervise(proc, info_r, jail_out, limits, start, on_output)
        elapsed = time.monotonic() - start
        stderr = err.decode("utf-8", "replace")
        if how == "timeout":
            raise SandboxTimeoutError(
                f"the sandboxed worker ran longer than {limits.timeout_s:g}s and was killed with every "
                f"process it started; raise {TIMEOUT_KEY} in trust.toml if the artifact is trusted to "
                "need longer"
            )
        total, files = _usage(jail_out, limits.max_output_files)
        if how == "output" or total > limits.max_output_bytes or files > limits.max_output_files:
            raise output_error(total, files, limits)
        returncode = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        error = limit_error(returncode, stderr, limits)
        if error is not None:
            raise error
        if returncode != 0 and stderr.startswith("bwrap: "):
            raise SandboxError(f"bubblewrap could not set up the {tier} jail: {stderr.strip()[:2000]}")
        if returncode == EXIT_CONFINE and stderr.startswith("safeload-confine: "):
            raise SandboxUnavailableError(
                f"the landlock jail could not confine itself: {stderr.strip()[:2000]}; `safeload doctor` "
                "explains what this host offers"
            )
        if ids is not None:
            _move_entries(jail_out, stage_fd, ids, output_dir, limits.max_output_files)
        return WorkerRun(returncode, stderr[-8000:], elapsed, out.decode("utf-8", "replace"), tier)
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow exceptions


def _boot(tier: Tier, mode: str, entry: str) -> str:
    """The jail interpreter's ``-c`` program: set ``sys.path``, confine (landlock tier), run ``entry``."""
    root = str(_WORKER_SRC.parent) if tier == "landlock" else _JAIL_WORKER_ROOT
    boot = f"import sys; sys.path[:0] = [{root!r}]; argv = sys.argv[1:]"
    if tier == "landlock":
        # Imported before confinement (the worker's own code, no artifact byte read yet), so the
        # import system's listing of the source folder is done while it may still read it.
        boot += "; import worker.__main__; from worker._confine import enter; argv = enter(argv)"
    if mode == "execute":
        boot += f"; sys.path.extend({_site_dirs()!r})"
    return f"{boot}; {entry}"


def _bubblewrap(
    tier: Tier, prefix: str, mode: str, jail_out: Path, limits: Limits, binds: Sequence[str]
) -> list[str]:
    """bubblewrap's options for the ``full`` and ``namespaces`` tiers, with the input's ``binds``."""
    cmd = [_tiers.support().bwrap or "bwrap", "--unshare-all", "--unshare-user"]
    if tier == "full":
        cmd += ["--disable-userns"]
    cmd += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    cmd += [
        "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",  # noqa: S108 - the jail's own tmpfs
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin",
    ]
    if prefix != "/usr":
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--ro-bind", str(_WORKER_SRC), f"{_JAIL_WORKER_ROOT}/worker"]
    if mode == "execute":
        for site in _site_dirs():
            cmd += ["--ro-bind", site, site]
    # A path, not a descriptor: a directory descriptor inherited into the jail would let the worker
    # walk out of it with openat(fd, "..").
    cmd += ["--bind", str(jail_out), "/out", *binds]
    if tier == "full":
        cmd += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]
    cmd += [
        "--dev", "/dev", "--remount-ro", "/dev",
        "--chdir", "/",
        "--remount-ro", "/",
        "--as-pid-1",
    ]
    return cmd


def _confine_options(prefix: str, mode: str, out: str, seccomp_fd: int) -> list[str]:
    """:mod:`worker._confine`'s options for the landlock tier: read-only what the full jail binds,
    read-write the output folder."""
    read_only = ["/usr", prefix, str(_WORKER_SRC.parent)]
    if mode == "execute":
        read_only += _site_dirs()
    options = ["--seccomp", str(seccomp_fd), "--abi", "1", "--parent", str(os.getpid())]
    for path in dict.fromkeys(read_only):
        options += ["--ro", path]
    return [*options, "--rw", out, "--"]


def _has_path(fd: int) -> bool:
    """Whether the file open at ``fd`` is still reachable at the path the kernel reports for it."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
        st, at_path = os.fstat(fd), os.stat(target)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (at_path.st_dev, at_path.st_ino)


def _write_sealed(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE)
    except OSError:
        return False


def _has_acl(fd: int) -> bool:
    """Whether the file has an access ACL, which can grant the jail's uid more than its mode bits show."""
    try:
        return "system.posix_acl_access" in os.listxattr(fd)
    except OSError:
        return False


def _jail_readable_copy(input_fd: int, ids: JailIds | None) -> int:
    """A descriptor for the input that the jail may read and may not write (a sealed copy if need be).

    Reopening ``/proc/self/fd/N`` goes through the file's own mount, not a read-only bind, so a file
    the jail's uid could write (or a memfd without a write seal) is copied into a sealed memfd first;
    so is a file with an ACL, whose mode bits do not tell what that uid may do. ``ids`` are the run's
    when the jail drops privileges, None when it runs as the caller.
    """
    st = os.fstat(input_fd)
    if not stat.S_ISREG(st.st_mode):
        raise SandboxError("the artifact handed to the sandbox is not a regular file")
    uid, gid = (ids.uid, ids.gid) if ids is not None else (os.getuid(), os.getgid())
    if _write_sealed(input_fd) or (readable_input(st, uid, gid) and not _has_acl(input_fd)):
        return os.dup(input_fd)
    src = os.open(f"/proc/self/fd/{input_fd}", os.O_RDONLY | os.O_CLOEXEC)

    def fill(copy: int) -> None:
        offset = 0
        while sent := os.sendfile(copy, src, offset, 1 << 30):
            offset += sent

    try:
        return sealed_memfd("artifact", fill)
    finally:
        os.close(src)


def _supervise(
    proc: subprocess.Popen[bytes],
    info_r: int,
    out_dir: Path,
    limits: Limits,
    start: float,
    on_output: Callable[[int], None] | None = None,
) -> tuple[bytes, bytes, str]:
    """Pump the worker's pipes until it exits; kill it on timeout or oversized output.

    Returns (stdout, stderr tail, how) where how is ``exit``, ``timeout`` or ``output``. Waiting is on a
    pidfd of bubblewrap next to the pipes, so an exit is seen at once (no polling interval).
    """
    deadline = start + limits.timeout_s
    streams: dict[int, str] = {info_r: "info"}
    assert proc.stderr is not None
    streams[proc.stderr.fileno()] = "stderr"
    if proc.stdout is not None:
        streams[proc.stdout.fileno()] = "stdout"
    buffers = {"info": b"", "stderr": b"", "stdout": b""}
    bwrap_fd = os.pidfd_open(proc.pid)
    child_fd: int | None = None
    how = "exit"
    exited = False
    next_check = start + _POLL_S
    try:
        while streams or not exited:
            now = time.monotonic()
            if exited:
                # Whatever still holds a pipe died with the jail's pid namespace; drain what is left.
                wait = max(0.0, min(deadline, now + 1.0) - now)
            else:
                if now >= deadline:
                    how = "timeout"
                    break
                if now >= next_check:
                    next_check = now + _POLL_S
                    total, files = _usage(out_dir, limits.max_output_files)
                    if total > limits.max_output_bytes or files > limits.max_output_files:
                        how = "output"
                        break
                    if on_output is not None:
                        on_output(total)
                wait = max(0.0, min(deadline, next_check) - now)
            watched = [*streams] + ([] if exited else [bwrap_fd])
            ready, _, _ = select.select(watched, [], [], wait)
            if exited and not ready:
                break
            for fd in ready:
                if fd == bwrap_fd:
                    exited = True
                    continue
                name = streams[fd]
                chunk = os.read(fd, 65536)
                if not chunk:
                    del streams[fd]
                    if name == "info":
                        child_fd = _child_pidfd(buffers["info"])
                    continue
                data = buffers[name] + chunk
                if name == "stderr":
                    data = data[-_STDERR_TAIL:]
                elif name == "stdout":
                    data = data[:_STDOUT_CAP]
                buffers[name] = data
        if how != "exit":
            _kill(proc, child_fd)
        proc.wait()
        if child_fd is not None:
            # The jail's pid 1 is bubblewrap's child; once it is gone the kernel has killed the rest
            # of its pid namespace.
            select.select([child_fd], [], [], 5.0)
    finally:
        if proc.returncode is None:
            _kill(proc, child_fd)
            proc.wait()
        os.close(bwrap_fd)
        if child_fd is not None:
            os.close(child_fd)
    return buffers["stdout"], buffers["stderr"], how


def _child_pidfd(info: bytes) -> int | None:
    """A pidfd for the jail's pid 1 from bubblewrap's ``--info-fd`` report (None if it is gone)."""
    try:
        pid = json.loads(info)["child-pid"]
        return os.pidfd_open(int(pid))
    except (ValueError, KeyError, TypeError, OSError):
        return None


def _kill(proc: subprocess.Popen[bytes], pidfd: int | None) -> None:
    if pidfd is not None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _walk(root: Path) -> Iterator[os.DirEntry[str]]:
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    yield entry
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed or replaced by the running worker since it was listed


def _usage(root: Path, max_files: int) -> tuple[int, int]:
    """Bytes in regular files and number of entries under ``root`` (stops counting past the cap).

    A tree the walk cannot follow (a worker can nest folders until their paths exceed ``PATH_MAX``) is
    reported as over the cap: what cannot be counted cannot be let through.
    """
    total = files = 0
    try:
        for entry in _walk(root):
            files += 1
            if files > max_files:
                break
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        return total, max_files + 1
    return total, files


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, at_path = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (at_path.st_dev, at_path.st_ino)


def _remove_stage(stage: Path, stage_fd: int) -> None:
    # A path swapped for another folder (or a symlink) since it was made is left alone.
    if _same_file(stage_fd, stage):
        shutil.rmtree(stage, ignore_errors=True)


def _safe_mode(mode: int) -> int:
    """``mode`` without set-id or sticky bits and without write access for group and others."""
    return stat.S_IMODE(mode) & 0o755


def _reclaim(stage: Path, stage_fd: int, ids: JailIds, max_files: int) -> None:
    """Make everything the worker wrote the caller's, with no set-id bits and no write access for others.

    Left owned by the jail's uid, a file the caller later caches could be rewritten by anything that
    runs as that uid later. No other host process runs as the run's uid, and the staging folder (mode
    0700 in a sticky folder) is closed to every other uid; but root, the owner of a non-sticky
    ``TMPDIR`` or a process of that uid outside the jail could still rename the staging folder and put
    a symlink in its place, or swap entries in the folders it could write while they are walked, and
    the handover does not rely on their absence. So the staging folder is taken back through the
    descriptor opened when it was made and must still be at its path; each folder is then locked
    (root's, not writable by others) *before* its entries are touched, so no name below a locked folder
    can change, and a file with more than one link (perhaps a host file linked in) is refused rather
    than chowned.
    """
    uid, gid = os.geteuid(), os.getegid()
    os.fchown(stage_fd, uid, gid)
    os.fchmod(stage_fd, 0o700)
    if not _same_file(stage_fd, stage):
        raise SandboxError(
            f"the staging folder {stage} was replaced while the worker ran (by root, the owner of "
            f"{stage.parent}, or a process of the jail's unprivileged uid {ids.uid}); nothing was taken "
            "from it. Find what moved it, and set TMPDIR to a sticky folder such as /tmp"
        )
    pending = [stage]
    count = 0
    while pending:
        with os.scandir(pending.pop()) as it:
            entries = list(it)
        for entry in entries:
            count += 1
            if count > max_files:
                raise SandboxError(f"the worker's output holds more than {max_files} entries")
            st = os.stat(entry.path, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, _safe_mode(st.st_mode))
                finally:
                    os.close(fd)
                pending.append(Path(entry.path))
                continue
            if stat.S_ISLNK(st.st_mode):
                os.chown(entry.path, uid, gid, follow_symlinks=False)
                continue
            if st.st_nlink != 1:
                raise SandboxError(
                    f"the worker's output {entry.name!r} has {st.st_nlink} links; a file linked in from "
                    "elsewhere on the host is never taken over"
                )
            os.chown(entry.path, uid, gid, follow_symlinks=False)
            # The folder is locked, so the name still holds this (now root's) file, not a swapped link.
            os.chmod(entry.path, _safe_mode(st.st_mode))


def _move_entries(src: Path, src_fd: int, ids: JailIds, dst: Path, max_files: int) -> None:
    """Move what the worker wrote from the staging folder into the caller's folder, links as links."""
    try:
        _reclaim(src, src_fd, ids, max_files)
    except OSError as exc:
        raise SandboxError(f"could not take over the worker's output in {src}: {exc}") from exc
    for entry in os.scandir(src):
        target = dst / entry.name
        try:
            try:
                os.rename(entry.path, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # Another file system: copies that never follow links and refuse FIFOs and devices.
                shutil.move(entry.path, target)
        except (OSError, shutil.Error) as exc:
            raise SandboxError(
                f"could not move the worker's output {entry.name!r} into {dst}: {exc}"
            ) from exc

