"""How a finished worker's exit status and stderr become limit errors, and the rlimits requested."""

from __future__ import annotations

import os

from safeload._jail.limits import EXECUTE_HEADROOM_BYTES, Limits, limit_error, output_error, prlimit_args


def test_kernel_kill_is_a_limit() -> None:
    error = limit_error(128 + 9, "", Limits())
    assert error is not None
    assert "SIGKILL" in str(error) and "[sandbox] timeout" in str(error) and "[sandbox] memory" in str(error)


def test_memory_error_is_a_limit() -> None:
    stderr = "Traceback (most recent call last):\n  ...\nMemoryError\n"
    error = limit_error(1, stderr, Limits(memory_bytes=256 << 20))
    assert error is not None and "[sandbox] memory" in str(error) and "256 MiB" in str(error)


def test_segfault_and_torch_allocator_are_memory_limits() -> None:
    error = limit_error(128 + 11, "", Limits())
    assert error is not None and "SIGSEGV" in str(error) and "[sandbox] memory" in str(error)
    stderr = "RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
    error = limit_error(1, stderr, Limits())
    assert error is not None and "[sandbox] memory" in str(error)


def test_file_too_large_is_an_output_limit() -> None:
    error = limit_error(1, "OSError: [Errno 27] File too large\n", Limits())
    assert error is not None and "[sandbox] max_output" in str(error)
    error = limit_error(128 + 25, "", Limits())  # SIGXFSZ
    assert error is not None and "[sandbox] max_output" in str(error)


def test_plain_failures_are_not_limits() -> None:
    assert limit_error(0, "MemoryError", Limits()) is None  # a successful run that printed the word
    assert limit_error(1, "ValueError: bad pickle", Limits()) is None
    assert limit_error(2, "", Limits()) is None


def test_output_error_names_the_key() -> None:
    assert "[sandbox] max_output" in str(output_error(3 << 30, 4, Limits(max_output_bytes=1 << 30)))


def test_prlimit_args() -> None:
    limits = Limits(timeout_s=10, memory_bytes=1 << 30, max_output_bytes=2 << 30, open_files=99, processes=7)
    args = prlimit_args(limits, execute=False)
    cpu = 10 * (os.cpu_count() or 1) + 1
    assert args == [
        f"--as={1 << 30}:{1 << 30}", f"--cpu={cpu}:{cpu + 2}", "--nofile=99:99",
        f"--fsize={2 << 30}:{2 << 30}", "--nproc=7:7", "--core=0:0",
    ]
    mapped = prlimit_args(limits, execute=False, mapped_bytes=5 << 30)
    assert mapped[0] == f"--as={6 << 30}:{6 << 30}"
    execute = prlimit_args(limits, execute=True)
    assert execute[0] == f"--as={(1 << 30) + EXECUTE_HEADROOM_BYTES}:{(1 << 30) + EXECUTE_HEADROOM_BYTES}"
