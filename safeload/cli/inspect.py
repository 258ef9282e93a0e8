"""``safeload inspect``: what a checkpoint holds and what code it would run, computed in the jail.

Severity of a referenced global (the worker reports only ``data`` or ``stub``; this module ranks stubs):

* ``data`` — allowlisted; rebuilt by the host as plain data (tensor and storage rebuilds, OrderedDict, ...).
* ``code-bearing`` — a stub whose module or function can run commands, touch files or the network, load
  code or reach arbitrary attributes: ``os``, ``posix``, ``nt``, ``subprocess``, every ``builtins`` global
  that is not allowlisted data (``eval``, ``exec``, ``getattr``, ``__import__``, ``compile``, ``open``, ...),
  ``importlib``, ``pickle``, ``marshal``, ``types``, ``ctypes``, ``socket``, ``shutil``, ``sys``, ``runpy``,
  ``pkgutil``, ``pydoc``, ``code``, ``pty``, ``webbrowser`` and more (the full list is
  :data:`CODE_BEARING_MODULES` and :data:`CODE_BEARING_GLOBALS`), plus ``operator.methodcaller`` /
  ``attrgetter``, ``functools.partial`` and the loaders inside torch and numpy that unpickle or compile.
* ``stub`` — any other class or function (an ``nn.Module`` subclass, a Lightning callback, a custom
  config class): never called; the load works and hands back a :class:`safeload.Stub` in its place.

Exit status: 0 when every global is ``data`` or ``stub``; 1 when any is ``code-bearing``; 2 on error.
A stub is not proof of safety (a custom class can be dangerous in its own code), which is why it is
listed; ``code-bearing`` marks the ones that are a known means of running code from a pickle.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.table import Table

from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_FINDING, EXIT_OK, UI

if TYPE_CHECKING:
    from safeload._loading.inspect import Inspection

__all__ = ["CODE_BEARING_GLOBALS", "CODE_BEARING_MODULES", "add_parser", "run"]

Severity = Literal["data", "stub", "code-bearing"]

#: Top-level modules (and all their submodules) whose globals are a means of running code.
CODE_BEARING_MODULES: frozenset[str] = frozenset(
    {
        "os",
        "posix",
        "nt",
        "posixpath",
        "ntpath",
        "subprocess",
        "_posixsubprocess",
        "builtins",
        "__builtin__",
        "importlib",
        "pickle",
        "_pickle",
        "cPickle",
        "marshal",
        "types",
        "ctypes",
        "_ctypes",
        "cffi",
        "socket",
        "_socket",
        "ssl",
        "shutil",
        "sys",
        "runpy",
        "pkgutil",
        "pydoc",
        "code",
        "codeop",
        "pty",
        "webbrowser",
        "multiprocessing",
        "_multiprocessing",
        "threading",
        "_thread",
        "signal",
        "asyncio",
        "select",
        "selectors",
        "http",
        "urllib",
        "urllib2",
        "ftplib",
        "smtplib",
        "telnetlib",
        "xmlrpc",
        "io",
        "_io",
        "tempfile",
        "glob",
        "pathlib",
        "platform",
        "gc",
        "inspect",
        "mmap",
        "fcntl",
        "resource",
        "site",
        "sysconfig",
        "zipimport",
        "linecache",
        "trace",
        "timeit",
        "cProfile",
        "profile",
        "pdb",
        "bdb",
        "dill",
        "cloudpickle",
        "shelve",
        "dbm",
        "sqlite3",
        "logging",
        "distutils",
        "setuptools",
        "pip",
        "requests",
        "httpx",
        "aiohttp",
        "paramiko",
        "yaml",
        "jinja2",
    }
)

#: Single globals, in modules that are otherwise harmless, that run code or reach arbitrary attributes.
CODE_BEARING_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("operator", "methodcaller"),
        ("operator", "attrgetter"),
        ("operator", "itemgetter"),
        ("_operator", "methodcaller"),
        ("_operator", "attrgetter"),
        ("_operator", "itemgetter"),
        ("functools", "partial"),
        ("functools", "reduce"),
        ("_functools", "partial"),
        ("_functools", "reduce"),
        ("torch", "load"),
        ("torch.serialization", "load"),
        ("torch.serialization", "_load"),
        ("torch.hub", "load"),
        ("torch.hub", "load_state_dict_from_url"),
        ("torch.hub", "download_url_to_file"),
        ("torch.jit", "load"),
        ("torch.jit._serialization", "load"),
        ("torch.package", "PackageImporter"),
        ("torch._C", "_jit_pass_lower_all_tuples"),
        ("torch.utils.cpp_extension", "load"),
        ("torch.utils.cpp_extension", "load_inline"),
        ("torch", "_load_global_deps"),
        ("numpy", "load"),
        ("numpy.lib.npyio", "load"),
        ("numpy.lib._npyio_impl", "load"),
        ("numpy.testing._private.utils", "runstring"),
        ("numpy.f2py", "compile"),
        ("joblib", "load"),
        ("joblib.numpy_pickle", "load"),
    }
)

# Whole subtrees of otherwise-trusted packages that compile or load code.
_CODE_BEARING_PREFIXES: tuple[str, ...] = (
    "torch.hub",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch._dynamo",
)


def classify(module: str, name: str, verdict: str) -> Severity:
    """The severity of a global the file references, given the worker's ``verdict`` (``data``/``stub``)."""
    if verdict == "data":
        return "data"
    top = module.split(".", 1)[0]
    if top in CODE_BEARING_MODULES or (module, name) in CODE_BEARING_GLOBALS:
        return "code-bearing"
    if any(module == p or module.startswith(p + ".") for p in _CODE_BEARING_PREFIXES):
        return "code-bearing"
    return "stub"


_DESCRIPTION = """\
Show what a checkpoint holds without running any of it: the format (detected from content), every tensor
(name, dtype, shape, bytes, shared storage), the non-tensor structure, and every global the file
references with a verdict: data (allowlisted, rebuilt as plain data), stub (a class or function that is
never called and comes back as a safeload.Stub), or code-bearing (a known way to run code from a pickle:
os, subprocess, builtins.eval/exec/getattr, importlib, marshal, operator.methodcaller, ...).

The file is parsed by the inert unpickler inside the bubblewrap jail; no byte of it is unpickled in this
process."""

_EPILOG = """\
examples:
  safeload inspect downloaded.ckpt
  safeload inspect pytorch_model.bin --json | jq '.globals[] | select(.severity == "code-bearing")'

exit codes: 0 data only (or harmless stubs), 1 code-bearing globals referenced, 2 error (unreadable,
unsupported format, sandbox failure)."""


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "inspect",
        help="show a checkpoint's tensors, structure and the globals it references",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="the checkpoint to inspect")
    parser.add_argument(
        "--max-depth", type=int, default=4, metavar="N", help="depth of the structure tree shown (default 4)"
    )
    parser.add_argument(
        "--encoding",
        default="utf-8",
        metavar="NAME",
        help='how to decode the strings of a pickle written by Python 2, as torch.load(encoding=...) '
        'takes it: latin1 (numpy arrays, most such files) or bytes (default utf-8)',
    )
    add_policy(parser)
    parser.set_defaults(run=run)


def _globals(ins: Inspection) -> list[dict[str, Any]]:
    return [
        {
            "module": g.module,
            "name": g.name,
            "verdict": g.verdict,
            "severity": classify(g.module, g.name, g.verdict),
            "count": g.count,
        }
        for g in ins.globals
    ]


def _tensors(ins: Inspection) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "kind": t.kind,
            "dtype": t.dtype,
            "shape": list(t.shape),
            "nbytes": t.nbytes,
            "storage": t.storage,
            "shared_with": list(t.shared_with),
        }
        for t in ins.tensors
    ]


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _render_structure(out: Console, node: Any, depth: int, max_depth: int, label: str = "") -> None:
    pad = "  " * depth
    if isinstance(node, Mapping) and "t" in node:
        kind = node["t"]
        items = node.get("items")
        if kind in ("dict", "odict", "namespace") and isinstance(items, list):
            out.print(f"{pad}{label}{kind} ({len(items)} keys)", markup=False)
            if depth < max_depth:
                for key, value in items[:50]:
                    _render_structure(out, value, depth + 1, max_depth, f"{_short(key)}: ")
                if len(items) > 50:
                    out.print(f"{pad}  ... {len(items) - 50} more", markup=False)
            return
        if kind in ("list", "tuple", "set", "frozenset") and isinstance(items, list):
            out.print(f"{pad}{label}{kind} ({len(items)} items)", markup=False)
            if depth < max_depth:
                for i, value in enumerate(items[:20]):
                    _render_structure(out, value, depth + 1, max_depth, f"[{i}] ")
            return
        if kind == "stub":
            out.print(f"{pad}{label}stub {node.get('module')}.{node.get('name')}", markup=False)
            # A stub's state (a vectorizer's vocabulary, a config's fields) is what it holds: show one
            # level of it even at the depth limit.
            state = node.get("state")
            if isinstance(state, Mapping) and state.get("t") in ("dict", "odict", "namespace", "list",
                                                                   "tuple"):
                fields = state.get("items")
                if isinstance(fields, list) and fields:
                    _render_structure(out, state, depth + 1, max(max_depth, depth + 2), "state: ")
            return
        out.print(f"{pad}{label}{_short(node)}", markup=False)
        return
    out.print(f"{pad}{label}{_short(node)}", markup=False)


def _short(node: Any) -> str:
    if isinstance(node, Mapping) and "t" in node:
        kind = node["t"]
        if kind in ("str", "int", "bool"):
            return repr(node.get("v"))
        if kind == "float":
            try:
                return repr(float.fromhex(str(node.get("v"))))
            except ValueError:
                return "float"
        if kind in ("tensor", "parameter", "ndarray"):
            inner = node.get("data", node)
            return f"{kind} {inner.get('dtype')} {list(inner.get('shape', []))}"
        if kind in ("torch_dtype", "torch_device", "np_dtype"):
            return f"{kind} {node.get('v')}"
        return str(kind)
    return repr(node)


def _has_module_stub(node: Any) -> bool:
    """Whether the structure holds a stub of an ``nn.Module`` (torch's own, a subclass with module state,
    or a TorchScript module), the only stubs ``safeload.state_dict()`` applies to."""
    todo, seen = [node], 0
    while todo and seen < 1_000_000:
        cur = todo.pop()
        seen += 1
        if isinstance(cur, Mapping):
            if cur.get("t") == "stub":
                if str(cur.get("module")).startswith(("torch.nn.", "__torch__")):
                    return True
                state = cur.get("state")
                items = state.get("items") if isinstance(state, Mapping) else None
                for pair in items if isinstance(items, list) else ():
                    if isinstance(pair, list) and pair and isinstance(pair[0], Mapping) and (
                        pair[0].get("v") == "_parameters"
                    ):
                        return True
            todo.extend(cur.values())
        elif isinstance(cur, list):
            todo.extend(cur)
    return False


def _count(tensors: list[dict[str, Any]]) -> str:
    """``3 tensors``, ``2 arrays`` or ``3 tensors and 2 arrays``: numpy arrays are not tensors."""
    arrays = sum(1 for t in tensors if t["kind"] == "ndarray")
    torch_ = len(tensors) - arrays
    parts = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in ((torch_, "tensor"), (arrays, "array")) if n]
    return " and ".join(parts) or "0 tensors"


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload._loading.inspect import inspect_artifact

    policy = load_policy(args)
    ins = inspect_artifact(args.file, policy=policy, encoding=args.encoding)
    globals_ = _globals(ins)
    tensors = _tensors(ins)
    structure = ins.structure
    code_bearing = [g for g in globals_ if g["severity"] == "code-bearing"]
    stubs = [g for g in globals_ if g["severity"] == "stub"]
    verdict = "code-bearing" if code_bearing else ("stubs" if stubs else "data-only")
    data = {
        "file": str(args.file),
        "format": ins.format,
        "verdict": verdict,
        "globals": globals_,
        "tensors": tensors,
        "tensor_bytes": sum(t["nbytes"] for t in tensors),
        "structure": structure,
    }

    def render(out: Console) -> None:
        out.print(
            f"{args.file}: format {data['format']}, {_count(tensors)}, {_human_bytes(data['tensor_bytes'])}",
            markup=False,
        )
        if tensors:
            kinds = {"array" if t["kind"] == "ndarray" else "tensor" for t in tensors}
            title = "tensors and arrays" if len(kinds) == 2 else f"{kinds.pop()}s"
            table = Table(title=title, title_justify="left")
            for col in ("name", "dtype", "shape", "bytes", "shares storage with"):
                table.add_column(col, justify="right" if col == "bytes" else "left")
            for t in tensors:
                table.add_row(
                    t["name"],
                    t["dtype"],
                    str(tuple(t["shape"])),
                    _human_bytes(t["nbytes"]),
                    ", ".join(t["shared_with"]),
                )
            out.print(table)
        if structure is not None:
            out.print("structure:")
            _render_structure(out, structure, 1, args.max_depth)
        table = Table(title="globals referenced", title_justify="left")
        for col in ("global", "severity", "count"):
            table.add_column(col)
        style = {"data": "green", "stub": "yellow", "code-bearing": "bold red"}
        for g in globals_:
            table.add_row(
                f"{g['module']}.{g['name']}", f"[{style[g['severity']]}]{g['severity']}[/]", str(g["count"])
            )
        out.print(table)
        if code_bearing:
            names = ", ".join(f"{g['module']}.{g['name']}" for g in code_bearing)
            out.print(
                f"[bold red]code-bearing:[/] this file tries to run code ({names}); safeload.load "
                "neutralises it, but do not open it with torch.load."
            )
        elif stubs:
            modules = _has_module_stub(structure)
            hint = "; safeload.state_dict() recovers an nn.Module's tensors" if modules else ""
            out.print(
                f"stubs only: classes or functions that safeload.load returns as safeload.Stub values{hint}.",
                markup=False,
            )
        else:
            out.print("data only: safe to load with safeload.load(weights_only=True).")

    ui.emit(data, render)
    return EXIT_FINDING if code_bearing else EXIT_OK
