"""The jail's seccomp filter: a classic-BPF program generated here, with no libseccomp.

bubblewrap loads the program (``--seccomp FD``) right before it executes the worker, so the filter only
has to allow what the Python interpreter (and, in execute mode, torch) needs after that point. It is a
deny list over a default of "allow": the kernel surface a taken-over worker would use to escape or to
reach the host (debugging other processes, BPF, namespaces, mounts, key rings, modules, io_uring,
network sockets and ``connect``, terminal injection) is refused, everything else behaves normally.

Verdicts:

- ``ENOSYS`` for ``clone3`` and the ``io_uring_*`` calls, so that the C library falls back to ``clone``
  (whose flags the filter can inspect) and Python never notices;
- ``EAFNOSUPPORT`` for ``socket()`` with any family other than ``AF_UNIX``;
- ``EPERM`` for everything else that is denied, including ``clone`` with any namespace flag, the
  ``TIOCSTI``/``TIOCLINUX`` ioctls and ``personality`` with flags other than the harmless ones;
- the process is killed when the system call comes from a foreign ABI (i386 on x86_64, arm32 on
  aarch64) and ``ENOSYS`` is returned for x32 numbers, so no second system call table bypasses the list.

The architecture is checked against the running kernel's: on an architecture without a table here the
launcher refuses to start (:class:`~safeload.errors.SandboxUnavailableError`) rather than run unfiltered.
"""

from __future__ import annotations

import errno
import platform
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from safeload.errors import SandboxUnavailableError

from .memfd import memfd_of

__all__ = ["ARCHES", "Arch", "build_filter", "native_arch", "seccomp_memfd"]

# <linux/filter.h> classic BPF opcodes used here.
BPF_LD_W_ABS = 0x20
BPF_JMP_JEQ_K = 0x15
BPF_JMP_JSET_K = 0x45
BPF_JMP_JGE_K = 0x35
BPF_RET_K = 0x06

# <linux/seccomp.h>
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_OFF_NR = 0
_OFF_ARCH = 4


def _arg_lo(index: int) -> int:
    """Offset of the low 32 bits of argument ``index`` (both supported ABIs are little-endian)."""
    return 16 + 8 * index


AF_UNIX = 1
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET.
# CLONE_NEWTIME (0x80) is left out on purpose: in clone()'s flags that bit is part of the exit signal,
# and a new time namespace can only be asked for through clone3 (ENOSYS here) or unshare (denied).
CLONE_NAMESPACE_FLAGS = 0x7E020000
# personality(): query (0xffffffff), PER_LINUX, PER_LINUX32 and UNAME26 variants, as container runtimes
# allow; READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE and friends are refused.
_SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
_X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True)
class Arch:
    """One system call ABI: its ``AUDIT_ARCH_*`` value and the numbers the filter needs."""

    name: str
    audit_arch: int
    syscalls: Mapping[str, int]
    x32_bit: bool = False


_COMMON_DENY = (
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
    "bpf", "perf_event_open", "userfaultfd", "fanotify_init",
    "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "open_tree_attr", "mount_setattr",
    "unshare", "setns",
    # The fetch worker is handed connected TCP sockets; connect() would let it disconnect one (AF_UNSPEC)
    # and reconnect it to any address the host can reach. No worker needs to connect anything.
    "connect",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "acct", "quotactl", "quotactl_fd", "lookup_dcookie", "name_to_handle_at", "open_by_handle_at",
    "vhangup", "syslog",
)
_X86_64_ONLY_DENY = ("iopl", "ioperm", "uselib", "nfsservctl")
# A jail without a pid namespace (safeload._sandbox.worker._confine) is one process: nothing may outlive the
# process
# the launcher kills, or signal a process outside it (Landlock scopes signals only from ABI 6).
_SOLO_DENY = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal")
_SOLO_X86_64_ONLY_DENY = ("fork", "vfork")
CLONE_THREAD = 0x00010000
_ENOSYS = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")

_X86_64 = Arch(
    name="x86_64",
    audit_arch=0xC000003E,  # AUDIT_ARCH_X86_64
    x32_bit=True,
    syscalls={
        "ioctl": 16, "socket": 41, "connect": 42, "clone": 56, "fork": 57, "vfork": 58, "kill": 62,
        "ptrace": 101, "rt_sigqueueinfo": 129, "tkill": 200, "tgkill": 234, "rt_tgsigqueueinfo": 297,
        "pidfd_send_signal": 424, "syslog": 103, "uselib": 134,
        "personality": 135, "vhangup": 153, "pivot_root": 155, "adjtimex": 159, "chroot": 161, "acct": 163,
        "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
        "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
        "nfsservctl": 180, "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246, "add_key": 248,
        "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298, "fanotify_init": 300,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "finit_module": 313,
        "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438,
        "process_madvise": 440, "mount_setattr": 442, "quotactl_fd": 443, "open_tree_attr": 467,
    },
)

# asm-generic/unistd.h numbering.
_AARCH64 = Arch(
    name="aarch64",
    audit_arch=0xC00000B7,  # AUDIT_ARCH_AARCH64
    syscalls={
        "lookup_dcookie": 18, "ioctl": 29, "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51,
        "vhangup": 58, "quotactl": 60, "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138,
        "rt_tgsigqueueinfo": 240, "pidfd_send_signal": 424, "acct": 89, "personality": 92, "unshare": 97,
        "kexec_load": 104,
        "init_module": 105, "delete_module": 106, "clock_settime": 112, "syslog": 116, "ptrace": 117,
        "reboot": 142, "settimeofday": 170, "adjtimex": 171, "socket": 198, "connect": 203, "add_key": 217,
        "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224, "swapoff": 225,
        "perf_event_open": 241, "fanotify_init": 262, "name_to_handle_at": 264, "open_by_handle_at": 265,
        "clock_adjtime": 266, "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "finit_module": 273, "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438,
        "process_madvise": 440, "mount_setattr": 442, "quotactl_fd": 443, "open_tree_attr": 467,
    },
)

ARCHES: Mapping[str, Arch] = {"x86_64": _X86_64, "aarch64": _AARCH64}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def native_arch() -> Arch:
    """The ABI of the running kernel.

    Raises:
        SandboxUnavailableError: the machine's architecture has no system call table here.
    """
    machine = platform.machine().lower()
    arch = ARCHES.get(_MACHINE_ALIASES.get(machine, machine))
    if arch is None or struct.calcsize("P") != 8:
        raise SandboxUnavailableError(
            f"safeload has no seccomp filter for this architecture ({machine!r}, "
            f"{struct.calcsize('P') * 8}-bit) and never runs the jail without one; "
            f"supported: {', '.join(sorted(ARCHES))} (64-bit)"
        )
    return arch


def _errno(code: int) -> int:
    return SECCOMP_RET_ERRNO | (code & 0xFFFF)


class _Assembler:
    """Classic BPF with symbolic jump targets, resolved (and range-checked) in :meth:`assemble`."""

    def __init__(self) -> None:
        self._code: list[tuple[int, int | str, int | str, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self._labels:
            raise AssertionError(f"duplicate label {name}")
        self._labels[name] = len(self._code)

    def load(self, offset: int) -> None:
        self._code.append((BPF_LD_W_ABS, 0, 0, offset))

    def ret(self, value: int) -> None:
        self._code.append((BPF_RET_K, 0, 0, value))

    def jump(self, op: int, k: int, jt: int | str, jf: int | str) -> None:
        """A conditional jump; an int target means "skip that many instructions", a str a label."""
        self._code.append((op, jt, jf, k))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (op, jt, jf, k) in enumerate(self._code):
            offsets = []
            for target in (jt, jf):
                offset = target if isinstance(target, int) else self._labels[target] - pc - 1
                if op & 0x07 != 0x05:  # BPF_CLASS != BPF_JMP: jt and jf are unused
                    offsets.append(offset)
                    continue
                # Classic BPF jumps forward only, by at most 255, and must land inside the program.
                if not 0 <= offset <= 255 or pc + 1 + offset >= len(self._code):
                    raise AssertionError(f"jump at {pc} to +{offset} is out of range")
                offsets.append(offset)
            out += struct.pack("=HBBI", op, offsets[0], offsets[1], k)
        return bytes(out)


def build_filter(arch: Arch, *, solo: bool = False) -> bytes:
    """The filter program for ``arch`` as ``struct sock_filter`` records, ready for ``--seccomp``.

    ``solo`` adds the rules of the jail without namespaces: no new processes (``clone`` only with
    ``CLONE_THREAD``, no ``fork``/``vfork``), no signals (the ``kill`` family), and no ``socket()`` of any
    family (the fetch worker's connections are handed in; a unix socket could reach a host daemon's).
    """
    nr = arch.syscalls
    asm = _Assembler()
    asm.load(_OFF_ARCH)
    asm.jump(BPF_JMP_JEQ_K, arch.audit_arch, 1, 0)
    asm.ret(SECCOMP_RET_KILL_PROCESS)
    asm.load(_OFF_NR)
    if arch.x32_bit:
        asm.jump(BPF_JMP_JGE_K, _X32_SYSCALL_BIT, "enosys", 0)

    x86 = arch.name == "x86_64"
    denied = [*_COMMON_DENY, *(_X86_64_ONLY_DENY if x86 else ())]
    if solo:
        denied += [*_SOLO_DENY, *(_SOLO_X86_64_ONLY_DENY if x86 else ())]
    for name in denied:
        asm.jump(BPF_JMP_JEQ_K, nr[name], "eperm", 0)
    for name in _ENOSYS:
        asm.jump(BPF_JMP_JEQ_K, nr[name], "enosys", 0)
    asm.jump(BPF_JMP_JEQ_K, nr["socket"], "socket", 0)
    asm.jump(BPF_JMP_JEQ_K, nr["ioctl"], "ioctl", 0)
    asm.jump(BPF_JMP_JEQ_K, nr["clone"], "clone", 0)
    asm.jump(BPF_JMP_JEQ_K, nr["personality"], "personality", 0)
    asm.ret(SECCOMP_RET_ALLOW)

    # socket(domain, ...): int domain, so the low word decides.
    asm.label("socket")
    if not solo:
        asm.load(_arg_lo(0))
        asm.jump(BPF_JMP_JEQ_K, AF_UNIX, "allow", 0)
    asm.ret(_errno(errno.EAFNOSUPPORT))

    # ioctl(fd, request, ...): the kernel compares request as an unsigned int.
    asm.label("ioctl")
    asm.load(_arg_lo(1))
    asm.jump(BPF_JMP_JEQ_K, TIOCSTI, "eperm", 0)
    asm.jump(BPF_JMP_JEQ_K, TIOCLINUX, "eperm", "allow")

    # clone(flags, ...) on both ABIs; namespace flags all live in the low word.
    asm.label("clone")
    asm.load(_arg_lo(0))
    if solo:
        asm.jump(BPF_JMP_JSET_K, CLONE_THREAD, 0, "eperm")
    asm.jump(BPF_JMP_JSET_K, CLONE_NAMESPACE_FLAGS, "eperm", "allow")

    asm.label("personality")
    asm.load(_arg_lo(0))
    for persona in _SAFE_PERSONALITIES:
        asm.jump(BPF_JMP_JEQ_K, persona, "allow", 0)
    # Shared verdicts last: classic BPF only jumps forward.
    asm.label("eperm")
    asm.ret(_errno(errno.EPERM))
    asm.label("enosys")
    asm.ret(_errno(errno.ENOSYS))
    asm.label("allow")
    asm.ret(SECCOMP_RET_ALLOW)
    return asm.assemble()


def seccomp_memfd(program: bytes) -> int:
    """A sealed memfd holding ``program``, positioned at its start, for ``--seccomp FD``.

    The descriptor is close-on-exec (hand it over with ``pass_fds``); the caller closes it.

    Raises:
        SandboxUnavailableError: the kernel cannot create memfds.
    """
    try:
        return memfd_of("seccomp", program)
    except OSError as exc:
        raise SandboxUnavailableError(f"cannot create a memfd for the seccomp filter: {exc}") from exc
