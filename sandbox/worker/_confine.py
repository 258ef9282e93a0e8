"""The namespace-less jail: a process confines itself before it reads a byte of the artifact.

Container runtimes that refuse new namespaces (Docker's default seccomp profile, a BuildKit ``RUN`` step,
Kubernetes ``RuntimeDefault``) still let a process restrict *itself*. The launcher starts the jail's
interpreter with an empty environment, only the descriptors it hands over, resource limits already set
(``prlimit``) and, when started as root, an unused uid of its own (``setpriv``); the first thing that
interpreter runs is :func:`confine`, which, in this order and before the worker is imported:

1. asks to be killed when its parent dies (``PR_SET_PDEATHSIG``), and exits if that already happened;
2. sets ``PR_SET_NO_NEW_PRIVS``, so nothing it executes can gain privileges (and so an unprivileged
   process may install the two filters below);
3. enforces a Landlock ruleset: read-only access beneath the same paths the bubblewrap jail binds
   (``/usr``, the Python installation, the worker's source, in execute mode the site folders),
   read and write beneath its output folder, ``/dev/null``, and nothing else: no execution anywhere, no
   reading the caller's home, the store, ``/proc`` or ``/etc``. From Landlock ABI 4, TCP bind and connect
   are refused; from ABI 6, signals to processes outside the jail and abstract unix sockets are too;
4. installs the jail's seccomp filter (the same program as bubblewrap's, built by the host with the
   process rules on top: no ``fork``/``vfork``, ``clone`` only for threads, no ``socket()`` of any family
   and no signals: so nothing outlives the one process the launcher kills on timeout).

A Landlock ABI the ruleset needs and the kernel lacks, or any step that fails, ends the process with exit
status 97 and one line on standard error; the worker never runs half-confined. Standard library only
(``ctypes`` for the three Landlock system calls and ``prctl``), so the code that sets up the boundary is
short enough to read in one sitting.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_CONFINE = 97

# <linux/prctl.h>, <linux/seccomp.h>
_PR_SET_PDEATHSIG = 1
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_SIGKILL = 9

# <asm-generic/unistd.h>: the same numbers on x86_64 and aarch64.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

# <linux/landlock.h> file system rights, and the ABI that introduced each.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1

_FS_BY_ABI = (
    (1, (1 << 13) - 1),
    (2, FS_REFER),
    (3, FS_TRUNCATE),
    (5, FS_IOCTL_DEV),
)

READ_ONLY = FS_READ_FILE | FS_READ_DIR
READ_WRITE = (
    READ_ONLY | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_TRUNCATE
)
# The jail's /dev/null: written to by libraries that silence output, read by nothing that matters.
DEV_NULL = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE


class ConfineError(Exception):
    """A confinement step failed; the worker must not run."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise ConfineError(f"{what}: {os.strerror(err)} (errno {err})")
    return result


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers, or 0 when Landlock is absent or disabled."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return int(version) if version > 0 else 0


def handled_fs(abi: int) -> int:
    """Every file system right ``abi`` knows: all of them are handled, so anything unlisted is denied."""
    rights = 0
    for since, bits in _FS_BY_ABI:
        if abi >= since:
            rights |= bits
    return rights


def _landlock(rules: Sequence[tuple[str, int]], abi: int) -> None:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fs = handled_fs(abi)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    # struct landlock_ruleset_attr grew with the ABI; pass only the fields this kernel knows.
    attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(
        libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), buf, ctypes.c_size_t(len(attr)),
                     ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # nothing there to grant
            try:
                if not os.path.isdir(path):
                    # Rights that only make sense on a directory are refused on a file (EINVAL).
                    access &= FS_READ_FILE | FS_WRITE_FILE | FS_EXECUTE | FS_TRUNCATE | FS_IOCTL_DEV
                # struct landlock_path_beneath_attr is packed: u64 allowed_access, s32 parent_fd.
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access & fs, fd), 12)
                _check(
                    libc.syscall(ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                                 ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), rule, ctypes.c_uint32(0)),
                    f"landlock_add_rule({path})",
                )
            finally:
                os.close(fd)
        _check(
            libc.syscall(
                ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)
            ),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset)


def _seccomp(program: bytes) -> None:
    if not program or len(program) % 8:
        raise ConfineError("the seccomp program is empty or malformed")
    libc = _libc()
    filters = ctypes.create_string_buffer(program, len(program))

    class _SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    prog = _SockFprog(len(program) // 8, ctypes.cast(filters, ctypes.c_void_p))
    _check(
        libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
        "prctl(PR_SET_SECCOMP)",
    )


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def confine(
    *, read_only: Sequence[str], read_write: Sequence[str], seccomp_fd: int, min_abi: int, parent: int
) -> None:
    """Confine this process for good: see the module docstring for the steps and their order.

    Raises:
        ConfineError: a step failed, or the kernel's Landlock ABI is below ``min_abi``.
    """
    libc = _libc()
    _check(libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        raise ConfineError("the launcher exited before the jail was set up")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    abi = landlock_abi()
    if abi < max(1, min_abi):
        raise ConfineError(f"the kernel offers Landlock ABI {abi}; this jail needs {max(1, min_abi)}")
    rules = [(p, READ_ONLY) for p in read_only] + [(p, READ_WRITE) for p in read_write]
    rules.append(("/dev/null", DEV_NULL))
    # The device nodes the full jail's /dev offers for reading (torch opens /dev/urandom at import).
    rules += [(f"/dev/{name}", FS_READ_FILE) for name in ("zero", "full", "random", "urandom")]
    _landlock(rules, abi)
    program = _read_all(seccomp_fd)
    os.close(seccomp_fd)
    _seccomp(program)


def enter(argv: Sequence[str]) -> list[str]:
    """Confine as ``argv``'s leading ``--confine`` options say, and return the rest for the worker.

    ``--ro PATH`` and ``--rw PATH`` may repeat; ``--seccomp FD``, ``--abi N`` and ``--parent PID`` are
    required; ``--`` ends them. Exits with :data:`EXIT_CONFINE` on any failure.
    """
    ro: list[str] = []
    rw: list[str] = []
    opts: dict[str, str] = {}
    it = iter(argv)
    rest: list[str] = []
    for arg in it:
        if arg == "--":
            rest = list(it)
            break
        value = next(it, "")
        if arg == "--ro":
            ro.append(value)
        elif arg == "--rw":
            rw.append(value)
        else:
            opts[arg.lstrip("-")] = value
    try:
        confine(
            read_only=ro, read_write=rw, seccomp_fd=int(opts["seccomp"]), min_abi=int(opts["abi"]),
            parent=int(opts["parent"]),
        )
    except (ConfineError, KeyError, ValueError, OSError) as exc:
        sys.stderr.write(f"safeload-confine: {exc}\n")
        sys.stderr.flush()
        os._exit(EXIT_CONFINE)
    return rest
