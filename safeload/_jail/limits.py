"""Resource limits of one jail run, how they are applied, and how a limit hit is reported.

The rlimits are set by util-linux ``prlimit`` on itself right before it executes bubblewrap (``prlimit
--as=... -- bwrap ...``): they are inherited through every later fork and exec, so they hold from the
first instruction of the worker, without a ``preexec_fn`` (unsafe in a multi-threaded caller) and without
the race of applying them to a running pid.

- ``RLIMIT_AS`` = ``memory_bytes`` plus the input's size for the standard-library worker (it maps the
  whole artifact; file-backed pages count against the limit but are not memory it allocates). In
  execute mode 4 GiB more: importing torch alone maps about 0.6 GiB of address space it never touches,
  and every thread's malloc arena reserves 64 MiB more, so address space overstates real use; the
  extra 4 GiB keeps a legitimate load from failing on reservations while still ending a runaway one.
- ``RLIMIT_CPU`` = the wall-clock timeout times the number of CPUs, plus one second: a backstop to the
  wall-clock kill, never the first limit a legitimate load meets. The hard limit (SIGKILL) is 2 s later.
- ``RLIMIT_NOFILE`` = ``open_files``; ``RLIMIT_FSIZE`` = ``max_output_bytes`` (per file; the total is
  checked while the worker runs and again after it); ``RLIMIT_CORE`` = 0.
- ``RLIMIT_NPROC`` = ``processes``: effective because the jail does not run as host root (see
  ``safeload._jail.privileges``); it bounds a fork bomb (threads count too). The kernel counts it per user
  namespace (this jail's processes) *and* at the host level for the run's own uid, which no other
  process has (bubblewrap, outside the jail, counts there too): it is this load's budget alone.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass

from safeload.errors import SandboxLimitError

from .tiers import Tier

__all__ = ["Limits", "limit_error", "output_error", "prlimit_args"]

_MiB = 1 << 20
_GiB = 1 << 30
EXECUTE_HEADROOM_BYTES = 4 * _GiB

MEMORY_KEY = "[sandbox] memory"
TIMEOUT_KEY = "[sandbox] timeout"
OUTPUT_KEY = "[sandbox] max_output"

# Text a worker prints when an allocation fails under RLIMIT_AS (Python, glibc, C++ runtimes).
_MEMORY_MARKERS = (
    "MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory",
    "can't allocate memory",  # torch's DefaultCPUAllocator
)
_FSIZE_MARKER = "[Errno 27] File too large"


@dataclass(frozen=True)
class Limits:
    """Resource limits for one worker run (``[sandbox]`` in ``trust.toml``)."""

    timeout_s: float = 120.0
    memory_bytes: int = 8 * _GiB
    max_output_bytes: int = 64 * _GiB
    open_files: int = 256
    processes: int = 512
    tmp_bytes: int = 256 * _MiB
    max_output_files: int = 10_000
    # The weakest jail tier a run accepts (safeload._jail.tiers): "full", "namespaces" or "landlock".
    weakest_jail: Tier = "landlock"


def prlimit_args(limits: Limits, *, execute: bool, mapped_bytes: int = 0) -> list[str]:
    """The ``prlimit`` options (``soft:hard``) that put ``limits`` on the jail.

    ``mapped_bytes`` (the input's size) is added to the address-space limit: the worker maps the whole
    artifact, and those file-backed pages count against ``RLIMIT_AS`` though they cost no memory.
    """
    memory = limits.memory_bytes + mapped_bytes + (EXECUTE_HEADROOM_BYTES if execute else 0)
    cpu = math.ceil(limits.timeout_s * (os.cpu_count() or 1)) + 1
    return [
        f"--as={memory}:{memory}",
        f"--cpu={cpu}:{cpu + 2}",
        f"--nofile={limits.open_files}:{limits.open_files}",
        f"--fsize={limits.max_output_bytes}:{limits.max_output_bytes}",
        f"--nproc={limits.processes}:{limits.processes}",
        "--core=0:0",
    ]


def _gib(n: int) -> str:
    return f"{n / _GiB:.3g} GiB" if n >= _GiB else f"{n / _MiB:.3g} MiB"


def limit_error(returncode: int, stderr: str, limits: Limits) -> SandboxLimitError | None:
    """The limit a finished worker ran into, judged from its exit status and the tail of its stderr.

    bubblewrap reports a worker killed by signal ``S`` as exit status ``128 + S``. The worker is pid 1
    of its namespace, so only signals the kernel forces (SIGKILL at the hard CPU limit or from the OOM
    killer, SIGSEGV from a failed stack growth) can end it; SIGXCPU and SIGXFSZ reach it only when it
    runs as an ordinary process (tests, other launch modes).
    """
    sig = returncode - 128 if returncode > 128 else 0
    if sig == signal.SIGXCPU or sig == signal.SIGKILL:
        return SandboxLimitError(
            f"the sandboxed worker was killed by the kernel ({signal.Signals(sig).name}) after using its CPU "
            f"time budget or too much memory (limits: {limits.timeout_s:g}s, {_gib(limits.memory_bytes)}); "
            f"raise {TIMEOUT_KEY} or {MEMORY_KEY} in trust.toml if the artifact is trusted to need more"
        )
    if sig in (signal.SIGSEGV, signal.SIGBUS):
        return SandboxLimitError(
            f"the sandboxed worker crashed ({signal.Signals(sig).name}), as a process does when its stack "
            f"cannot grow under the address-space limit ({_gib(limits.memory_bytes)}); raise {MEMORY_KEY} "
            "in trust.toml if the artifact is trusted to need more"
        )
    if sig == signal.SIGXFSZ:
        return SandboxLimitError(
            f"the sandboxed worker tried to write a file larger than {_gib(limits.max_output_bytes)}; "
            f"raise {OUTPUT_KEY} in trust.toml if the artifact is trusted to need more"
        )
    tail = stderr[-4000:]
    if returncode != 0 and _FSIZE_MARKER in tail:
        # Python ignores SIGXFSZ, so RLIMIT_FSIZE surfaces as an uncaught EFBIG.
        return SandboxLimitError(
            f"the sandboxed worker tried to write a file larger than {_gib(limits.max_output_bytes)}; "
            f"raise {OUTPUT_KEY} in trust.toml if the artifact is trusted to need more"
        )
    if returncode != 0 and any(marker in tail for marker in _MEMORY_MARKERS):
        return SandboxLimitError(
            f"the sandboxed worker ran out of memory (limit {_gib(limits.memory_bytes)}); "
            f"raise {MEMORY_KEY} in trust.toml if the artifact is trusted to need more"
        )
    return None


def output_error(total: int, files: int, limits: Limits) -> SandboxLimitError:
    """The error for an output folder over its size or file-count cap."""
    return SandboxLimitError(
        f"the sandboxed worker wrote {_gib(total)} in {files} files, over the cap of "
        f"{_gib(limits.max_output_bytes)} / {limits.max_output_files} files; raise {OUTPUT_KEY} in "
        "trust.toml if the artifact is trusted to need more"
    )
