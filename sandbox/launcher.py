"""Starts the worker inside a bubblewrap jail and waits for it, within limits.

This is a first, minimal baseline; hardening (seccomp, rlimits, privilege drop) is layered on here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from safeload.errors import SandboxError, SandboxTimeoutError, SandboxUnavailableError

__all__ = ["Limits", "WorkerRun", "run_worker"]

_GiB = 1 << 30
_WORKER_SRC = Path(__file__).resolve().parent / "worker"
_JAIL_WORKER_ROOT = "/opt/safeload"


@dataclass(frozen=True)
class Limits:
    """Resource limits for one worker run."""

    timeout_s: float = 120.0
    memory_bytes: int = 8 * _GiB
    max_output_bytes: int = 64 * _GiB
    open_files: int = 256


@dataclass(frozen=True)
class WorkerRun:
    """What a finished worker left behind (its output files are in the output folder)."""

    returncode: int
    stderr: str
    elapsed_s: float


def _bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailableError(
            "bubblewrap is not installed, and safeload never opens pickle files outside its jail; "
            "install it with: apt-get install -y bubblewrap"
        )
    return path


def run_worker(
    input_fd: int,
    output_dir: Path,
    *,
    mode: Literal["inert", "execute"] = "inert",
    limits: Limits = Limits(),
    args: Sequence[str] = (),
) -> WorkerRun:
    """Run the worker on the artifact open at ``input_fd``, writing into ``output_dir``.

    Inside the jail the artifact is ``/in/artifact`` (read-only) and the output folder is ``/out``.

    Raises:
        SandboxUnavailableError: bubblewrap or user namespaces are missing.
        SandboxTimeoutError: the worker ran past ``limits.timeout_s``.
        SandboxError: the worker could not be started.
    """
    prefix = sys.base_prefix
    out_fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        cmd = [
            _bwrap(),
            "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--clearenv",
            "--tmpfs", "/tmp",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
            "--ro-bind", prefix, prefix,
            "--ro-bind", str(_WORKER_SRC), f"{_JAIL_WORKER_ROOT}/worker",
            "--dir", "/in",
            "--ro-bind-fd", str(input_fd), "/in/artifact",
            "--bind-fd", str(out_fd), "/out",
            "--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys",
            "--dev", "/dev",
            "--remount-ro", "/",
            "--as-pid-1",
        ]
        boot = f"import sys; sys.path[:0] = [{_JAIL_WORKER_ROOT!r}]"
        if mode == "execute":
            site = sysconfig.get_paths()["purelib"]
            cmd += ["--ro-bind", site, site]
            boot += f"; sys.path.append({site!r})"
        boot += "; import runpy; runpy.run_module('worker', run_name='__main__')"
        python = str(Path(prefix) / "bin" / "python3")
        cmd += ["--", python, "-I", "-S", "-B", "-c", boot, "--mode", mode, *args]
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(input_fd, out_fd), timeout=limits.timeout_s, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SandboxTimeoutError(
                f"the sandboxed worker ran longer than {limits.timeout_s:g}s and was killed; "
                "raise [sandbox] timeout in trust.toml if the artifact is trusted to need longer"
            ) from exc
        except OSError as exc:
            raise SandboxError(f"could not start bubblewrap: {exc}") from exc
        return WorkerRun(proc.returncode, proc.stderr.decode("utf-8", "replace")[-8000:], time.monotonic() - start)
    finally:
        os.close(out_fd)
