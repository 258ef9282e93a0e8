"""Tar layers unpacked in the jail: the host never parses a registry's archive bytes.

:func:`unpack` runs the unpack worker (:mod:`safeload._sandbox.worker._unpack`) in the loader's jail (its own
unprivileged uid, read-only root, no network, seccomp, rlimits, a wall-clock limit) over a layer the
host has already hashed against its descriptor. The job (a sealed memfd, inherited under its number)
names the members to write and the budgets; the worker writes each one under a number it chooses, never
under the member's name, and reports ``name -> (number, size)``. The launcher takes the output folder
back as for every jailed run (ownership reclaimed, one link per file, size and count caps); this module
checks the report's shape, each name again with the store's own rule
(:func:`safeload._relpath.is_safe_relpath`), and opens every file it hands on with ``O_NOFOLLOW``: a
regular file, one link, exactly the size reported, within the member cap.

A layer the worker refuses (a sparse member, a link, a device, an unsafe name, a budget passed) raises
:class:`UnpackRefused`, an :class:`~safeload.errors.IntegrityError` naming the budget when one was
passed; the caller adds where the layer came from and how to raise the budget.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from safeload._relpath import is_safe_relpath
from safeload.errors import IntegrityError, SandboxError

from .handback import open_output, printable, sealed_job, worker_error
from .launcher import Tier, run_worker
from .limits import Limits

__all__ = ["BUDGET_KEYS", "UnpackRefused", "Unpacked", "unpack"]

UNPACK_TIMEOUT_S = 6 * 3600.0
_UNPACK_MEMORY = 1 << 30
_MAX_NAME = 1024
#: The budgets a refusal may name (the trust.toml keys of an oci registry, or max_file_size).
BUDGET_KEYS = frozenset({"max_unpacked", "max_unpacked_files", "max_unpack_ratio", "max_file_size"})


class UnpackRefused(IntegrityError):
    """The worker refused the layer; ``budget`` is the budget it passed, None for an unsafe entry."""

    def __init__(self, message: str, budget: str | None) -> None:
        super().__init__(message)
        self.budget = budget


@dataclass(frozen=True)
class Unpacked:
    """What a layer held: the members written (name -> file in the output folder), every regular
    member's name when a listing was asked for, and the number of entries read."""

    files: dict[str, Path]
    names: list[str]
    members: int


def unpack(
    layer_fd: int,
    output_dir: Path,
    *,
    gzip: bool,
    compressed_size: int,
    wanted: Collection[str] | None,
    listing: bool = False,
    max_member_bytes: int,
    max_total_bytes: int,
    max_members: int,
    max_ratio: int,
    weakest_jail: Tier = "landlock",
) -> Unpacked:
    """Unpack the tar layer open at ``layer_fd`` in the jail into ``output_dir`` (made by the caller,
    private, empty): the members named in ``wanted`` (every plain file when None), and with ``listing``
    the names of every plain file.

    Raises:
        UnpackRefused: the layer holds something other than plain files and folders, an unsafe or
            repeated name, or passes a budget.
        SandboxUnavailableError, SandboxTimeoutError, SandboxLimitError: as for any jailed run.
        SandboxError: the worker crashed or reported something that does not validate.
    """
    wanted_list = None if wanted is None else sorted(wanted)
    files_cap = max_members if wanted_list is None else min(len(wanted_list), max_members)
    out_cap = min(max_total_bytes, files_cap * max_member_bytes)
    result_cap = (max_members if listing or wanted_list is None else files_cap) * (_MAX_NAME + 64) + (1 << 20)
    job: dict[str, object] = {
        "version": 1, "gzip": gzip, "compressed_size": compressed_size, "wanted": wanted_list,
        "list": listing, "max_member_bytes": max_member_bytes, "max_total_bytes": max_total_bytes,
        "max_members": max_members, "max_ratio": max_ratio,
    }
    limits = Limits(
        timeout_s=UNPACK_TIMEOUT_S,
        memory_bytes=_UNPACK_MEMORY,
        max_output_bytes=out_cap + result_cap,
        max_output_files=files_cap + 2,
        weakest_jail=weakest_jail,
    )
    job_fd = sealed_job(job, "unpack")
    try:
        run = run_worker(
            layer_fd, output_dir, mode="unpack", limits=limits, args=["--job", f"fd:{job_fd}"],
            inherit=(job_fd,),
        )
    finally:
        os.close(job_fd)
    if run.returncode != 0:
        why = worker_error(output_dir, run.stderr, "unpack")
        raise SandboxError(f"the unpack worker failed (exit {run.returncode}): {why}")
    return _read_result(output_dir, result_cap, max_member_bytes, wanted_list, listing)


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} is not a count")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or len(value) > _MAX_NAME or not is_safe_relpath(value):
        raise ValueError(f"{printable(repr(value))[:300]} is not a relative file name")
    return value


def _read_result(
    output_dir: Path, cap: int, member_cap: int, wanted: list[str] | None, listing: bool
) -> Unpacked:
    fd = open_output(output_dir / "result.json", cap, "unpack")
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(cap + 1)
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("wrong shape")
        if doc.get("ok") is False:
            budget = doc.get("budget")
            if budget is not None and budget not in BUDGET_KEYS:
                raise ValueError("unknown budget")
            message = doc.get("message")
            if not isinstance(message, str):
                raise ValueError("a refusal without a message")
            raise UnpackRefused(printable(message), budget)
        if doc.get("ok") is not True:
            raise ValueError("wrong shape")
        items = doc.get("files")
        if not isinstance(items, list):
            raise ValueError("files is not a list")
        files: dict[str, Path] = {}
        for n, item in enumerate(items):
            if not isinstance(item, dict) or item.get("out") != str(n):
                raise ValueError("files are not numbered in order")
            name = _name(item.get("name"))
            if name in files or (wanted is not None and name not in wanted):
                raise ValueError(f"{name!r} was not asked for, or came twice")
            size = _count(item.get("size"), "size")
            path = output_dir / str(n)
            out = open_output(path, member_cap, "unpack")
            try:
                if os.fstat(out).st_size != size:
                    raise ValueError(f"{n} does not hold the {size} bytes reported")
            finally:
                os.close(out)
            files[name] = path
        names: list[str] = []
        if listing:
            listed = doc.get("names")
            if not isinstance(listed, list):
                raise ValueError("names is not a list")
            names = [_name(item) for item in listed]
            if len(set(names)) != len(names) or not set(files) <= set(names):
                raise ValueError("the listing repeats a name or misses a file written")
        members = _count(doc.get("members"), "members")
    except (ValueError, KeyError, TypeError) as exc:
        raise SandboxError(f"the unpack worker's result does not validate: {printable(str(exc))}") from None
    leftovers = set(os.listdir(output_dir)) - {"result.json", "error.json", *(p.name for p in files.values())}
    for extra in leftovers:  # written, but not reported: never handed on
        with contextlib.suppress(OSError):
            os.unlink(output_dir / extra)
    return Unpacked(files=files, names=names, members=members)
