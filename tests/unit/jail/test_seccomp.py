"""The seccomp program generator: well-formed classic BPF, and the verdicts it gives.

The program is decoded and run here by a small classic-BPF interpreter over ``struct seccomp_data``
records, for both supported ABIs; the kernel's own verdicts are checked by the jail's integration tests.
"""

from __future__ import annotations

import errno
import struct

import pytest

from safeload._jail import seccomp as sc
from safeload.errors import SandboxUnavailableError

ALLOW = sc.SECCOMP_RET_ALLOW
KILL = sc.SECCOMP_RET_KILL_PROCESS


def eperm() -> int:
    return sc.SECCOMP_RET_ERRNO | errno.EPERM


def enosys() -> int:
    return sc.SECCOMP_RET_ERRNO | errno.ENOSYS


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    assert len(program) % 8 == 0
    return [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]


def run(program: bytes, *, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """Interpret ``program`` the way the kernel does for one system call."""
    full_args = (*args, *([0] * (6 - len(args))))
    data = struct.pack("<iIQ6Q", nr, arch, 0, *full_args)
    code = decode(program)
    acc = 0
    pc = 0
    for _ in range(len(code) + 1):
        op, jt, jf, k = code[pc]
        if op == sc.BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif op == sc.BPF_RET_K:
            return k
        elif op == sc.BPF_JMP_JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif op == sc.BPF_JMP_JGE_K:
            pc += 1 + (jt if acc >= k else jf)
        elif op == sc.BPF_JMP_JSET_K:
            pc += 1 + (jt if acc & k else jf)
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc}")
    raise AssertionError("program did not return")


@pytest.mark.parametrize("arch", sorted(sc.ARCHES))
def test_program_is_well_formed(arch: str) -> None:
    code = decode(sc.build_filter(sc.ARCHES[arch]))
    assert 0 < len(code) <= 4096  # BPF_MAXINSNS
    jumps = {sc.BPF_JMP_JEQ_K, sc.BPF_JMP_JGE_K, sc.BPF_JMP_JSET_K}
    for pc, (op, jt, jf, k) in enumerate(code):
        assert op in jumps | {sc.BPF_LD_W_ABS, sc.BPF_RET_K}, f"opcode {op:#x} at {pc}"
        if op in jumps:
            assert pc + 1 + jt < len(code) and pc + 1 + jf < len(code), f"jump out of range at {pc}"
        if op == sc.BPF_LD_W_ABS:
            # Only nr, arch and the low words of args; all 4-byte aligned inside seccomp_data (64 bytes).
            assert k % 4 == 0 and k < 64
    assert code[-1][0] == sc.BPF_RET_K  # falling off the end would be rejected by the kernel


@pytest.mark.parametrize("arch", sorted(sc.ARCHES))
def test_verdicts(arch: str) -> None:
    a = sc.ARCHES[arch]
    prog = sc.build_filter(a)
    nr = a.syscalls

    def verdict(name: str, *args: int) -> int:
        return run(prog, arch=a.audit_arch, nr=nr[name], args=args)

    for name in ("ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open", "userfaultfd",
                 "keyctl", "add_key", "request_key", "mount", "umount2", "pivot_root", "chroot", "fsopen",
                 "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "unshare",
                 "setns", "kexec_load", "init_module", "finit_module", "reboot", "swapon", "settimeofday"):
        assert verdict(name) == eperm(), name
    for name in ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert verdict(name) == enosys(), name

    assert verdict("socket", 1) == ALLOW  # AF_UNIX
    assert verdict("socket", 2) == sc.SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT  # AF_INET
    assert verdict("socket", 10) == sc.SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT  # AF_INET6
    assert verdict("socket", 16) == sc.SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT  # AF_NETLINK

    assert verdict("ioctl", 0, sc.TIOCSTI) == eperm()
    assert verdict("ioctl", 0, sc.TIOCLINUX) == eperm()
    assert verdict("ioctl", 0, 0x5401) == ALLOW  # TCGETS
    # The kernel compares the request as a 32-bit value; garbage in the upper half must not help.
    assert verdict("ioctl", 0, (1 << 32) | sc.TIOCSTI) == eperm()

    sigchld = 17
    thread_flags = 0x3D0F00  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
    assert verdict("clone", sigchld) == ALLOW
    assert verdict("clone", thread_flags) == ALLOW
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        assert verdict("clone", sigchld | flag) == eperm(), hex(flag)

    assert verdict("personality", 0xFFFFFFFF) == ALLOW
    assert verdict("personality", 0) == ALLOW
    assert verdict("personality", 0x0400000) == eperm()  # READ_IMPLIES_EXEC
    assert verdict("personality", 0x0040000) == eperm()  # ADDR_NO_RANDOMIZE

    # Unlisted calls are allowed: read, write, openat, mmap, execve.
    for number in range(0, 5):
        if number not in nr.values():
            assert run(prog, arch=a.audit_arch, nr=number) == ALLOW

    # A foreign ABI (i386/arm32 compat, or the other 64-bit table) kills the process.
    for foreign in (0x40000003, 0x40000028, *(o.audit_arch for o in sc.ARCHES.values() if o is not a)):
        assert run(prog, arch=foreign, nr=0) == KILL


def test_x32_numbers_are_refused() -> None:
    a = sc.ARCHES["x86_64"]
    prog = sc.build_filter(a)
    # x32 ptrace would be 0x40000000 | 521; any number with the x32 bit set gets ENOSYS.
    assert run(prog, arch=a.audit_arch, nr=0x40000000 | 521) == enosys()
    assert run(prog, arch=a.audit_arch, nr=0x40000000 | 101) == enosys()


def test_unknown_architecture_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sc.platform, "machine", lambda: "riscv64")
    with pytest.raises(SandboxUnavailableError, match="riscv64"):
        sc.native_arch()


def test_assembler_rejects_backward_and_far_jumps() -> None:
    asm = sc._Assembler()
    asm.label("top")
    asm.load(0)
    asm.jump(sc.BPF_JMP_JEQ_K, 1, "top", 0)
    asm.ret(ALLOW)
    with pytest.raises(AssertionError, match="out of range"):
        asm.assemble()

    asm = sc._Assembler()
    asm.load(0)
    asm.jump(sc.BPF_JMP_JEQ_K, 1, "far", 0)
    for _ in range(300):
        asm.ret(ALLOW)
    asm.label("far")
    asm.ret(KILL)
    with pytest.raises(AssertionError, match="out of range"):
        asm.assemble()


def test_memfd_holds_the_program_sealed() -> None:
    import fcntl
    import os

    prog = sc.build_filter(sc.native_arch())
    fd = sc.seccomp_memfd(prog)
    try:
        assert os.read(fd, len(prog) + 1) == prog
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"\0" * 8, 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize("arch", sorted(sc.ARCHES))
def test_solo_verdicts(arch: str) -> None:
    """The jail without namespaces: one process, no signals, no sockets, on top of every common rule."""
    a = sc.ARCHES[arch]
    solo, common = sc.build_filter(a, solo=True), sc.build_filter(a)
    nr = a.syscalls

    def verdict(prog: bytes, name: str, *args: int) -> int:
        return run(prog, arch=a.audit_arch, nr=nr[name], args=args)

    sigchld = 17
    thread_flags = 0x3D0F00
    assert verdict(solo, "clone", thread_flags) == ALLOW
    assert verdict(solo, "clone", sigchld) == eperm()  # fork() through clone
    assert verdict(solo, "clone", 0x4111) == eperm()  # CLONE_VM|CLONE_VFORK|SIGCHLD: posix_spawn
    assert verdict(solo, "clone", thread_flags | 0x10000000) == eperm()  # a thread in a new user ns
    for name in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal",
                 *(("fork", "vfork") if arch == "x86_64" else ())):
        assert verdict(solo, name) == eperm(), name
        assert verdict(common, name) == ALLOW, name
    for family in (1, 2, 10, 16):
        assert verdict(solo, "socket", family) == sc.SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT
    for name in ("ptrace", "mount", "unshare", "connect", "bpf"):
        assert verdict(solo, name) == eperm(), name
