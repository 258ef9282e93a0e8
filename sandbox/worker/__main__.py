"""Worker entry point (runs inside the jail; standard library only on the inert path).

``--mode inert`` reads ``/in/artifact`` with the inert unpickler and writes ``/out/manifest.json`` (and
``/out/tensors.safetensors`` when some bytes cannot be referenced in place). ``--mode execute`` hands
over to ``execute.main``; ``--mode skops`` to ``_skops.main`` (a scikit-learn pickle unpickled for real and
written as ``/out/model.skops``, in the execute-mode jail); ``--mode fetch`` to ``_fetch.main`` (downloads
over connections the host hands in); ``--mode unpack`` to ``_unpack.main`` (an OCI tar layer, its job at
``--job``). On failure it writes ``/out/error.json`` (see PROTOCOL.md) and exits non-zero.
"""

from __future__ import annotations

import gc
import importlib
import mmap
import os
import sys

from ._common import Budgets, EncodingError, FormatError, LimitError, open_input, write_error, write_json

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from collections.abc import Sequence

def _options(argv: Sequence[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        if not arg.startswith("--"):
            raise SystemExit(f"worker: unexpected argument {arg!r}")
        opts[arg[2:]] = next(it, "")
    return opts


def _text_encoding(name: str) -> str:
    """``--encoding``: ``bytes`` or the name of a text codec (never a bytes-to-bytes one like ``hex``)."""
    if name == "bytes":
        return name
    import codecs

    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        raise FormatError(f"encoding {name[:40]!r} is not a codec Python knows") from None
    if not getattr(info, "_is_text_encoding", True):
        raise FormatError(f"encoding {name[:40]!r} is not a text encoding")
    return info.name


def _inert(path: str, out_dir: str, budgets: Budgets, encoding: str = "utf-8") -> None:
    from ._emit import build_manifest, write_outputs
    from ._formats import parse

    fd = open_input(path)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise FormatError("the file is empty")
        data = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    # The object graph only grows while a file is read, and everything in it stays reachable until the
    # worker exits: the cycle collector would rescan it again and again (a third of the time for files of
    # many small tensors) and never free anything. The jail's memory limit bounds the process either way.
    gc.disable()
    parsed, table = parse(data, budgets, _text_encoding(encoding))
    manifest = build_manifest(parsed.fmt, parsed.root, table, parsed.globals_seen, budgets)
    write_outputs(out_dir, table)
    write_json(out_dir, "manifest.json", manifest)


def main(argv: Sequence[str]) -> int:
    opts = _options(argv)
    mode = opts.get("mode", "inert")
    out_dir = opts.get("out", "/out")
    if mode == "execute":
        try:
            execute = importlib.import_module(f"{__package__}.execute")
        except ImportError as exc:
            return write_error(out_dir, "crash", f"execute mode is not available in this build: {exc}")
        rc: int = execute.main(list(argv))
        return rc
    if mode == "skops":
        from ._skops import main as skops

        return skops(opts.get("in", "/in/artifact"), out_dir)
    if mode == "fetch":
        from ._fetch import main as fetch

        try:
            return fetch(opts.get("in", "/in/artifact"), out_dir)
        except Exception as exc:  # the host reports it as a sandbox crash
            return write_error(out_dir, "crash", f"{type(exc).__name__}: {exc}")
    if mode == "unpack":
        from ._unpack import main as unpack

        try:
            return unpack(opts.get("job", ""), opts.get("in", "/in/artifact"), out_dir)
        except Exception as exc:  # the host reports it as a sandbox crash
            return write_error(out_dir, "crash", f"{type(exc).__name__}: {exc}")
    if mode != "inert":
        return write_error(out_dir, "crash", f"unknown worker mode {mode!r}")
    sys.setrecursionlimit(20_000)
    budgets = Budgets(max_output_bytes=int(opts.get("max-output", str(Budgets().max_output_bytes))))
    try:
        _inert(opts.get("in", "/in/artifact"), out_dir, budgets, opts.get("encoding") or "utf-8")
    except EncodingError as exc:
        return write_error(out_dir, "encoding", str(exc))
    except FormatError as exc:
        return write_error(out_dir, "format", str(exc))
    except (LimitError, MemoryError, RecursionError) as exc:
        return write_error(out_dir, "limit", str(exc) or type(exc).__name__)
    except Exception as exc:  # the host reports any other failure as a sandbox crash
        return write_error(out_dir, "crash", f"{type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
