"""``safeload.load``: a drop-in for ``torch.load`` that never unpickles in the calling process.

The file is opened once. Safetensors files are mapped directly. Every other format is read by the worker
inside the bubblewrap jail, which answers with a manifest (validated by :mod:`safeload._loading.manifest`)
and,
when some bytes cannot be referenced in place, a safetensors file; tensors are then views on the file
the host opened (mapped copy-on-write, zero-copy) or on that safetensors file.
"""

from __future__ import annotations

import gc
import mmap as _mmap
import os
import platform
import re
import shutil
import stat
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal, Union

import torch

from safeload._jail.memfd import sealed_memfd
from safeload._loading.formats import sniff
from safeload._loading.manifest import Manifest, StorageSpec, parse_manifest
from safeload._loading.rebuild import MapLocation, build, make_restore
from safeload._stub import Stub
from safeload._trust.local_files import local_load_path
from safeload.errors import (
    MissingModuleError,
    SandboxError,
    SandboxLimitError,
    UnsafeContentError,
    UnsupportedFormatError,
)
from safeload.policy import Policy, load_policy

__all__ = ["FileLike", "load", "state_dict"]

FileLike = Union[str, "os.PathLike[str]", IO[bytes]]

# Python's JSON objects take ~25x the bytes they are parsed from: the cap bounds the host's memory.
_MANIFEST_CAP = 256 << 20
_ERROR_CAP = 1 << 16
_COPY_CHUNK = 1 << 22


def _open_source(f: FileLike, policy: Policy) -> tuple[int, str]:
    """Open ``f`` once for reading; return the descriptor and a name for messages.

    A path is opened read-only and must be a regular file; it is used in place (tensors map it) when
    only the caller or root can change it. A file someone else may write, and a file object, are copied
    into a private memory file sealed against writes, so that the bytes loaded cannot change under the
    loader or the tensors (nor be truncated away, which would fault the caller with SIGBUS).

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: as ``open`` would.
        TypeError: ``f`` is neither a path nor a binary file object.
    """
    if isinstance(f, (str, os.PathLike)):
        name = os.fspath(f)
        # [files] pins: a pinned path is copied into the store while hashed and the copy is opened.
        fd = os.open(local_load_path(name, policy), os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(f"{name} is not a regular file")
            if not _others_may_write(fd, st):
                return fd, name
            copy = sealed_memfd("input", lambda out: _copy_fd(fd, out, st.st_size))
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return copy, name
    read = getattr(f, "read", None)
    if read is None:
        raise TypeError(f"safeload.load expects a path or a binary file object, not {type(f).__name__}")

    def copy_object(out: int) -> None:
        while True:
            chunk = read(_COPY_CHUNK)
            if not chunk:
                break
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError("safeload.load needs a file object opened in binary mode")
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]

    return sealed_memfd("input", copy_object), str(getattr(f, "name", "<file object>"))


def _others_may_write(fd: int, st: os.stat_result) -> bool:
    """Whether anyone but the caller and root may change the file (owner, group/other bits, an ACL)."""
    if st.st_uid not in (os.geteuid(), 0) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return True
    try:
        os.getxattr(fd, "system.posix_acl_access")
    except OSError:
        return False  # no ACL (or none supported): the mode bits are the whole story
    return True


def _copy_fd(src: int, out: int, size: int) -> None:
    offset = 0
    while offset < size:
        n = os.sendfile(out, src, offset, min(size - offset, 1 << 30))
        if n == 0:
            break  # the file shrank meanwhile: the copy holds what was there
        offset += n


def _sandbox_limits(policy: Policy) -> Any:
    from safeload._jail.launcher import Limits

    s = policy.sandbox
    return Limits(
        timeout_s=s.timeout_s, memory_bytes=s.memory_bytes, max_output_bytes=s.max_output_bytes,
        weakest_jail=s.weakest_jail,
    )


def _open_output(dir_fd: int, name: str, cap: int) -> int | None:
    """Open a file the worker wrote: no symlink, regular, one link, at most ``cap`` bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SandboxError(f"the sandboxed worker left an unusable {name} ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > cap:
        os.close(fd)
        raise SandboxError(
            f"the sandboxed worker left a {name} that is not a regular, single-link file under {cap} bytes"
        )
    return fd


def _read_fd(fd: int) -> bytes:
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0) if size else b""
    finally:
        os.close(fd)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _worker_error(dir_fd: int, returncode: int, stderr: str) -> Exception:
    import json

    fd = _open_output(dir_fd, "error.json", _ERROR_CAP)
    kind, message = "crash", ""
    doc: Any = None
    if fd is not None:
        try:
            doc = json.loads(_read_fd(fd))
            fields_ok = isinstance(doc, dict) and isinstance(doc.get("kind"), str)
            if fields_ok and isinstance(doc.get("message"), str):
                kind, message = doc["kind"], _CONTROL.sub("?", doc["message"])[:2000]
        except (ValueError, RecursionError):
            pass
    if kind == "encoding":
        return UnsupportedFormatError(
            f"{message}. Load it with encoding=\"latin1\" (numpy arrays and most Python 2 pickles) or "
            "encoding=\"bytes\" (keeps Python 2 strings as bytes), as pickle.load and torch.load take it; "
            "on the command line, --encoding latin1"
        )
    if kind == "module" and fd is not None:
        module = doc.get("module") if isinstance(doc, dict) else None
        if isinstance(module, str) and _MODULE_NAME.fullmatch(module):
            return _missing_module(module)
    if kind == "unsafe":
        return UnsafeContentError(message or "the sandboxed worker refused the file's contents")
    if kind == "format":
        return UnsupportedFormatError(f"{message}. safeload opens safetensors, torch checkpoints (zip and "
                                      "legacy), pickles, numpy files and TorchScript archives")
    if kind == "limit":
        return SandboxLimitError(f"{message}; raise the [sandbox] limits in trust.toml only if the artifact "
                                 "is trusted to need more")
    detail = message or _CONTROL.sub("?", stderr.strip().splitlines()[-1] if stderr.strip() else "")
    return SandboxError(f"the sandboxed worker failed (exit status {returncode}): {detail[:2000]}")


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}(\.[A-Za-z_][A-Za-z0-9_]{0,99}){0,9}")
# Import names whose pip package is called something else.
_PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml", "cv2": "opencv-python", "PIL": "pillow",
              "skimage": "scikit-image", "google.protobuf": "protobuf", "Crypto": "pycryptodome"}


def _missing_module(module: str) -> MissingModuleError:
    top = module.split(".", 1)[0]
    pip = _PIP_NAMES.get(module) or _PIP_NAMES.get(top) or top
    exc = MissingModuleError(
        f"the checkpoint needs the module {module}, which is not installed in this environment; install it "
        f"(pip install {pip}) to load it in execute mode, or load it inertly (the default), where its "
        "classes come back as safeload.Stub values",
        name=module,
    )
    return exc


@contextmanager
def _output_dir() -> Iterator[tuple[Path, int]]:
    path = Path(tempfile.mkdtemp(prefix="safeload-"))
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield path, dir_fd
    finally:
        os.close(dir_fd)
        shutil.rmtree(path, ignore_errors=True)


def _output_tensors(fd: int) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(f"/proc/self/fd/{fd}", framework="pt") as st:
            out: dict[str, torch.Tensor] = {}
            for key in st.keys():
                sl = st.get_slice(key)
                if sl.get_dtype() != "U8" or len(sl.get_shape()) != 1:
                    raise SandboxError(f"the worker's tensors.safetensors holds a non-byte tensor {key!r}")
                out[key] = st.get_tensor(key)
            return out
    except SafetensorError as exc:
        raise SandboxError(f"the worker's tensors.safetensors is malformed: {exc}") from None


def _run_jail(
    fd: int, size: int, policy: Policy, mode: Literal["inert", "execute"], encoding: str = "utf-8"
) -> tuple[Manifest, dict[str, torch.Tensor]]:
    from safeload._jail.launcher import run_worker

    limits = _sandbox_limits(policy)
    with _output_dir() as (out, dir_fd):
        args = ["--max-output", str(limits.max_output_bytes)]
        if encoding != "utf-8":
            args += ["--encoding", encoding]
        run = run_worker(fd, out, mode=mode, limits=limits, args=args)
        if run.returncode != 0:
            raise _worker_error(dir_fd, run.returncode, run.stderr)
        mfd = _open_output(dir_fd, "manifest.json", _MANIFEST_CAP)
        if mfd is None:
            raise SandboxError("the sandboxed worker exited without writing its manifest")
        raw = _read_fd(mfd)
        tfd = _open_output(dir_fd, "tensors.safetensors", limits.max_output_bytes)
        tensors: dict[str, torch.Tensor] = {}
        if tfd is not None:
            try:
                tensors = _output_tensors(tfd)
            finally:
                os.close(tfd)
    manifest = parse_manifest(raw, input_size=size, outputs={k: v.numel() for k, v in tensors.items()})
    return manifest, tensors


# x86-64 loads and stores need no alignment, and torch's CPU kernels use unaligned vector moves, so a
# misaligned storage maps zero-copy there (tests/integration/test_load_unaligned.py runs a battery of ops
# on every dtype at every misalignment). Complex numbers are the exception: c10::complex<double> is
# alignas(16) and the compiler emits aligned moves for it (indexing segfaults at 8 mod 16); complex
# storages, and every storage on other architectures, are copied into aligned memory instead.
_UNALIGNED_OK = platform.machine() in ("x86_64", "AMD64")
_COMPLEX = frozenset({"complex32", "complex64", "complex128"})


def _maps_unaligned(spec: StorageSpec) -> bool:
    return _UNALIGNED_OK and spec.align <= 8 and spec.dtype not in _COMPLEX


def _pread_into(fd: int, buf: torch.Tensor, offset: int) -> None:
    view = buf.numpy().data.cast("B")
    while view:
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise SandboxError("the input file shrank while it was being loaded")
        view, offset = view[n:], offset + n


def _raw_storages(
    manifest: Manifest, fd: int, size: int, tensors: dict[str, torch.Tensor]
) -> list[torch.Tensor]:
    mapping: _mmap.mmap | None = None
    raw: list[torch.Tensor] = []
    for spec in manifest.storages:
        if spec.nbytes == 0:
            raw.append(torch.empty(0, dtype=torch.uint8))
            continue
        if spec.kind == "output":
            t = tensors[spec.key]
            if t.data_ptr() % spec.align:
                t = t.clone()
        elif spec.offset % spec.align and not _maps_unaligned(spec):
            # Legacy files store raw storages at any offset and a mapping cannot move them to an aligned
            # address: where misaligned data is not safe to hand to torch, read it (one copy, straight
            # from the page cache) into aligned memory.
            t = torch.empty(spec.nbytes, dtype=torch.uint8)
            _pread_into(fd, t, spec.offset)
        else:
            if mapping is None:
                # Copy-on-write: tensors are writable, and writes never reach the verified file.
                mapping = _mmap.mmap(fd, size, access=_mmap.ACCESS_COPY)
            t = torch.frombuffer(mapping, dtype=torch.uint8, count=spec.nbytes, offset=spec.offset)
        raw.append(t)
    return raw


def _load_safetensors(fd: int, name: str, map_location: MapLocation) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors: dict[str, torch.Tensor] = load_file(f"/proc/self/fd/{fd}")
    except SafetensorError as exc:
        raise UnsupportedFormatError(f"{name} looks like safetensors but is malformed: {exc}") from None
    if map_location is None:
        return tensors
    restore = make_restore(map_location)
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        storage = restore(t.untyped_storage(), "cpu")
        if storage is not t.untyped_storage():
            t = torch.empty(0, dtype=t.dtype, device=storage.device).set_(
                storage, t.storage_offset(), t.shape, t.stride()
            )
        out[key] = t
    return out


def load(
    f: FileLike,
    map_location: MapLocation = None,
    *,
    weights_only: bool | None = None,
    mmap: bool | None = None,
    policy: Policy | None = None,
    unpickler: Literal["inert", "execute"] = "inert",
    encoding: str = "utf-8",
    pickle_module: Any = None,
) -> Any:
    """Load a checkpoint like ``torch.load``, without running any of its code in this process.

    ``f`` is a path or a binary file object. ``map_location`` takes every form ``torch.load`` takes.
    Objects the inert unpickler will not build come back as :class:`safeload.Stub`; with
    ``weights_only=True`` any such object is an error instead. ``mmap`` is accepted for compatibility:
    storages are always mapped. ``unpickler="execute"`` (or ``[sandbox] unpickler`` in the policy) runs
    the real ``torch.load`` inside the jail instead of the inert unpickler, unless ``weights_only=True``.
    ``encoding`` decodes the Python 2 strings of a pickle written by Python 2 (``"latin1"`` for numpy
    arrays and most such files, ``"bytes"`` to keep them as bytes), as ``torch.load``'s and
    ``pickle.load``'s argument of that name does. ``pickle_module`` is accepted only as ``None`` or the
    standard ``pickle`` module: the jail decides how a file is unpickled.

    Raises:
        UnsupportedFormatError: the content is not a format safeload opens; a Python 2 string does not
            decode with ``encoding`` (the message says which to pass); ``pickle_module`` is another module.
        MissingModuleError: execute mode, and the checkpoint imports a module this environment lacks.
        DeviceUnavailableError: the checkpoint's storages are on a device this machine lacks and
            ``map_location`` does not move them (a ``RuntimeError`` too, as ``torch.load`` raises).
        UnsafeContentError: ``weights_only=True`` and the checkpoint references code-bearing globals.
        SandboxUnavailableError: bubblewrap or user namespaces are missing.
        SandboxTimeoutError: the worker ran past the policy's timeout.
        SandboxLimitError: the artifact hit a memory, output, object or depth budget.
        SandboxError: the worker crashed or returned output that does not validate.
    """
    del mmap
    if unpickler not in ("inert", "execute"):
        raise ValueError(f"unpickler must be 'inert' or 'execute', not {unpickler!r}")
    _check_pickle_module(pickle_module)
    encoding = check_encoding(encoding)
    pol = load_policy(policy)
    # weights_only=True asks for data only, which the inert unpickler alone guarantees: no code runs.
    mode: Literal["inert", "execute"] = (
        "execute" if "execute" in (unpickler, pol.sandbox.unpickler) and not weights_only else "inert"
    )
    fd, name = _open_source(f, pol)
    try:
        size = os.fstat(fd).st_size
        if sniff(fd, size) == "safetensors":
            return _load_safetensors(fd, name, map_location)
        with _no_cycle_collection():
            return _load_from_jail(fd, size, name, pol, mode, map_location, weights_only, encoding)
    finally:
        os.close(fd)


def check_encoding(encoding: str) -> str:
    """``encoding`` as the worker takes it: ``bytes`` or the canonical name of a text codec.

    Raises:
        UnsupportedFormatError: not a text codec Python knows (``hex``, ``rot13`` and the like are not).
    """
    import codecs

    if encoding == "bytes":
        return encoding
    if not isinstance(encoding, str):
        raise UnsupportedFormatError(
            f"encoding must be a codec name or 'bytes', not {type(encoding).__name__}"
        )
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UnsupportedFormatError(
            f"encoding {encoding[:40]!r} is not a codec Python knows; Python 2 pickles load with "
            "encoding=\"latin1\" or encoding=\"bytes\""
        ) from None
    if not getattr(info, "_is_text_encoding", True):
        raise UnsupportedFormatError(f"encoding {encoding[:40]!r} is not a text encoding")
    return "utf-8" if info.name == "utf-8" else info.name


def _check_pickle_module(pickle_module: Any) -> None:
    import pickle

    if pickle_module is None or pickle_module is pickle:
        return
    name = getattr(pickle_module, "__name__", type(pickle_module).__name__)
    raise UnsupportedFormatError(
        f"pickle_module={str(name)[:60]} is not supported: safeload reads pickles with its own inert "
        "unpickler in the jail (or, with unpickler=\"execute\", the standard pickle module there). Leave "
        "pickle_module out; a file only another pickler's code can read is not one safeload opens"
    )


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the cycle collector while a manifest is parsed and built.

    Every object made then stays reachable (the manifest's node tree, then the result), so collections
    triggered by the allocations only rescan it: with many small tensors, about a fifth of the load.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _refuse_code(name: str, manifest: Manifest) -> None:
    """``weights_only=True``: a checkpoint that references any code-bearing global is refused whole."""
    if manifest.stub_globals:
        names = ", ".join(f"{g.module}.{g.name}" for g in manifest.stub_globals[:20])
        raise UnsafeContentError(
            f"{name} references globals that are not plain data ({names}); nothing from it was run. "
            "Load it with weights_only=False to get them back as safeload.Stub values, or re-save the "
            "tensors with safeload convert"
        )


def _load_from_jail(
    fd: int, size: int, name: str, pol: Policy, mode: Literal["inert", "execute"], map_location: MapLocation,
    weights_only: bool | None, encoding: str = "utf-8",
) -> Any:
    manifest, tensors = _run_jail(fd, size, pol, mode, encoding)
    if weights_only:
        _refuse_code(name, manifest)
    raw = _raw_storages(manifest, fd, size, tensors)
    result = build(manifest, raw, make_restore(map_location))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result


def _module_state(stub: Stub) -> dict[str, Any] | None:
    state = stub.state
    if isinstance(state, dict) and isinstance(state.get("_parameters"), dict):
        return state
    return None


# A module shared under several names is walked once per name, as nn.Module.state_dict does; a hostile
# checkpoint can share submodules level after level, so the walk is budgeted.
_MAX_MODULE_VISITS = 1_000_000
_MAX_MODULE_DEPTH = 200


def _walk(
    stub: Stub, prefix: str, out: OrderedDict[str, torch.Tensor], depth: int, visits: list[int]
) -> None:
    visits[0] += 1
    if depth > _MAX_MODULE_DEPTH or visits[0] > _MAX_MODULE_VISITS:
        raise UnsafeContentError(
            f"the pickled module tree is deeper than {_MAX_MODULE_DEPTH} levels or has more than "
            f"{_MAX_MODULE_VISITS} submodule paths; it is not a state dict safeload will expand"
        )
    state = _module_state(stub)
    if state is None:
        # TorchScript objects keep attributes directly in their state: tensors and submodules.
        if isinstance(stub.state, dict):
            for key, value in stub.state.items():
                if isinstance(value, torch.Tensor):
                    out[prefix + str(key)] = value.detach()
                elif isinstance(value, Stub):
                    _walk(value, f"{prefix}{key}.", out, depth + 1, visits)
        return
    skip = state.get("_non_persistent_buffers_set") or set()
    for key, value in state["_parameters"].items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(key)] = value.detach()
    buffers = state.get("_buffers")
    if isinstance(buffers, dict):
        for key, value in buffers.items():
            if isinstance(value, torch.Tensor) and key not in skip:
                out[prefix + str(key)] = value.detach()
    modules = state.get("_modules")
    if isinstance(modules, dict):
        for key, value in modules.items():
            if isinstance(value, Stub):
                _walk(value, f"{prefix}{key}.", out, depth + 1, visits)


def _is_script_archive(obj: Any) -> bool:
    """What :func:`load` returns for a TorchScript archive: ``{"data": Stub, "constants": ...}``."""
    return (isinstance(obj, dict) and "data" in obj and set(obj) <= {"data", "constants"}
            and isinstance(obj["data"], Stub) and isinstance(obj["data"].state, dict))


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _has_state(obj: Any) -> bool:
    return (isinstance(obj, Stub) and isinstance(obj.state, dict)) or isinstance(obj, torch.nn.Module) or (
        _is_script_archive(obj) or (bool(obj) and _is_tensor_dict(obj)))


def _described(obj: Any) -> str:
    """A short description of ``obj`` for a message: never the repr of a whole checkpoint."""
    if isinstance(obj, dict):
        keys = list(obj)
        shown = ", ".join(repr(k)[:40] for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
        return f"a {type(obj).__name__} with {len(keys)} keys ({shown})"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    text = repr(obj)
    return f"a {type(obj).__name__} ({text[:200]}{'...' if len(text) > 200 else ''})"


def state_dict(obj: Any) -> OrderedDict[str, torch.Tensor]:
    """The ``state_dict()`` of what :func:`load` returned for a model.

    For a pickled ``nn.Module`` (a :class:`Stub` tree): parameters, then persistent buffers, then each
    submodule's entries under ``name.``, in the order the module defined them, detached as
    ``nn.Module.state_dict`` returns them. For a TorchScript archive (``{"data": Stub, "constants": ...}``)
    the same, from its ``data``. A dictionary whose values are all tensors is a state dict already: it
    comes back as an ``OrderedDict`` of the same (detached) tensors.

    Raises:
        TypeError: ``obj`` is none of these; the message names what it is (never its whole repr) and, for
            a checkpoint that holds a state dict under a key (``state_dict``, ``model``, ...), that key.
        UnsafeContentError: the module tree nests too deep or names too many submodule paths.
    """
    if isinstance(obj, torch.nn.Module):
        return OrderedDict(obj.state_dict())
    if _is_script_archive(obj):
        obj = obj["data"]
    if isinstance(obj, Stub) and isinstance(obj.state, dict):
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        _walk(obj, "", out, 0, [0])
        return out
    if _is_tensor_dict(obj):
        return OrderedDict((k, v.detach()) for k, v in obj.items())
    hint = ""
    if isinstance(obj, dict):
        inner = next((k for k, v in obj.items() if _has_state(v)), None)
        if inner is not None:
            hint = f"; its {str(inner)[:60]!r} entry is one: safeload.state_dict(obj[{str(inner)[:60]!r}])"
    raise TypeError(
        "state_dict expects a pickled nn.Module (a safeload.Stub), a TorchScript archive or a dict of "
        f"tensors, and got {_described(obj)}{hint}"
    )
