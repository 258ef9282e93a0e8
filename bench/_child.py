"""One measurement in a process of its own.

``python -m bench._child '<json spec>'`` measures once in a new interpreter (``--spawn`` mode);
``python -m bench._child --serve TIMEOUT`` is a fork server that does the common third-party imports once
and forks a new process per measurement request read from stdin. Either way no measurement inherits
another's allocator state, lazy initialisation or mapped files. What a path imports is imported before
the clock starts (every path pays interpreter and torch start-up alike); the clock covers the call and a
read of every page of every tensor it returned, so a lazy mapping cannot look faster than it is.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["MARK", "NotAvailable", "main"]

MARK = "@@bench-result@@ "
_PAGE = os.sysconf("SC_PAGE_SIZE")


class NotAvailable(Exception):
    """The measured path does not exist (yet) in this checkout; the row shows ``n/a (reason)``."""


def _rss_now() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _iter_tensors(obj: Any, depth: int = 0) -> Iterator[Any]:
    import torch

    if depth > 64:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.state_dict(keep_vars=True).values()
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _iter_tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _iter_tensors(v, depth + 1)


def _touch(obj: Any) -> tuple[int, int]:
    """Read one byte of every page of every distinct storage; return (storages, bytes)."""
    import numpy as np

    seen: set[int] = set()
    total = 0
    acc = 0
    for t in _iter_tensors(obj):
        st = t.untyped_storage()
        ptr, n = st.data_ptr(), st.nbytes()
        if n == 0 or ptr in seen:
            continue
        seen.add(ptr)
        total += n
        if n <= _PAGE:
            acc += ctypes.c_uint8.from_address(ptr).value + ctypes.c_uint8.from_address(ptr + n - 1).value
        else:
            arr = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(ptr))
            acc += int(arr[::_PAGE].sum()) + int(arr[-1])
    del acc
    return len(seen), total


class _ChildPeaks:
    """Samples the peak RSS (``VmHWM``) of every descendant process while a measurement runs.

    ``RUSAGE_CHILDREN`` cannot be used for this: a child forked from the measuring process (about
    450 MiB of libraries) carries that high-water mark through ``exec``, so it reports the parent's size
    for a worker that used 20 MiB. ``VmHWM`` belongs to the exec'd image alone. Sampling every 5 ms
    walks only this process's descendants (``/proc/<pid>/task/<tid>/children``), so the cost is small.
    """

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _children(pid: int) -> list[int]:
        out: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                    out += [int(x) for x in f.read().split()]
        except OSError:
            pass
        return out

    @staticmethod
    def _hwm(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @staticmethod
    def _cmdline(pid: int) -> bytes:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read()
        except OSError:
            return b""

    def _loop(self) -> None:
        me = os.getpid()
        mine = self._cmdline(me)
        while not self._stop.wait(0.005):
            todo = self._children(me)
            while todo:
                pid = todo.pop()
                # Between fork and exec a child still has this process's image (and high-water mark).
                if self._cmdline(pid) != mine:
                    self.peak = max(self.peak, self._hwm(pid))
                todo += self._children(pid)


def _timed(call: Callable[[], Any], touch: bool = True) -> dict[str, Any]:
    rss0 = _rss_now()
    with _ChildPeaks() as kids:
        t0 = time.perf_counter()
        obj = call()
        storages, nbytes = _touch(obj) if touch else (0, 0)
        elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "rss_before": rss0, "storages": storages, "tensor_bytes": nbytes,
            "worker_peak_rss": kids.peak}


def _require(module: str, attr: str | None = None) -> Any:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise NotAvailable(f"{module} not importable: {exc}") from exc
    if attr is None:
        return mod
    try:
        return getattr(mod, attr)
    except AttributeError as exc:
        raise NotAvailable(f"{module}.{attr} not implemented yet") from exc


# --------------------------------------------------------------------------------------------- cases


def _case_torch_load(p: dict[str, Any]) -> dict[str, Any]:
    import torch

    kw: dict[str, Any] = {"weights_only": p["weights_only"]}
    if p.get("mmap"):
        kw["mmap"] = True
    return _timed(lambda: torch.load(p["path"], **kw))


def _case_pickle_load(p: dict[str, Any]) -> dict[str, Any]:
    import pickle

    import torch  # noqa: F401  (unpickling tensors needs it; import outside the clock)

    def call() -> Any:
        with open(p["path"], "rb") as f:
            return pickle.load(f)

    return _timed(call)


def _case_safetensors(p: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    return _timed(lambda: load_file(p["path"]))


def _case_safeload_load(p: dict[str, Any]) -> dict[str, Any]:
    import torch  # noqa: F401

    load = _require("safeload", "load")
    kw: dict[str, Any] = {}
    if p.get("unpickler"):
        kw["unpickler"] = p["unpickler"]
    return _timed(lambda: load(p["path"], **kw))


def _case_python_start(p: dict[str, Any]) -> dict[str, Any]:
    python = str(Path(sys.base_prefix) / "bin" / "python3")
    with _ChildPeaks() as kids:
        t0 = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-B", "-c", "pass"], check=True)
        elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "worker_peak_rss": kids.peak}


def _case_jail_start(p: dict[str, Any]) -> dict[str, Any]:
    """``run_worker`` on a pickle of None: the jail up, the stdlib worker answering, nothing else.

    ``p["call"]`` is 1 for the first call in a fresh process (it pays the launcher's one-time probes:
    bubblewrap and user namespaces, the seccomp program) or 2 for the call after that.
    """
    run_worker = _require("safeload._jail.launcher", "run_worker")
    with tempfile.TemporaryDirectory(prefix="bench-jail-") as tmp:
        art = Path(tmp) / "tiny.pkl"
        art.write_bytes(b"\x80\x04N.")  # pickle of None, protocol 4
        fd = os.open(art, os.O_RDONLY)
        try:
            times = []
            with _ChildPeaks() as kids:
                for i in range(p["call"]):
                    out = Path(tmp) / f"out{i}"
                    out.mkdir()
                    t0 = time.perf_counter()
                    run = run_worker(fd, out)
                    times.append(time.perf_counter() - t0)
                    if run.returncode != 0:
                        raise RuntimeError(f"worker exited {run.returncode}: {run.stderr[-400:]}")
                    if not (out / "manifest.json").exists():
                        raise RuntimeError("worker exited 0 without writing manifest.json")
        finally:
            os.close(fd)
    return {"seconds": times[-1], "worker_peak_rss": kids.peak}


def _case_sha256(p: dict[str, Any]) -> dict[str, Any]:
    """sha256 of an in-memory buffer: one core (``threads`` = 1, scaled by the core count: the target's
    reference) or really in ``threads`` threads, one buffer each (what the machine gives right now)."""
    from concurrent.futures import ThreadPoolExecutor

    threads = int(p.get("threads", 1))
    buf = os.urandom(1 << 20) * (p["nbytes"] >> 20)
    hashlib.sha256(buf[: 1 << 20]).digest()
    t0 = time.perf_counter()
    if threads == 1:
        hashlib.sha256(buf).digest()
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: hashlib.sha256(buf).digest(), range(threads)))
    elapsed = time.perf_counter() - t0
    cores = os.cpu_count() or 1
    scale = cores if threads == 1 else threads
    return {"seconds": elapsed, "bytes": len(buf) * max(1, threads), "cores": cores,
            "throughput": len(buf) / elapsed * scale}


def _read_tree(folder: Path) -> int:
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    total = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    total += n
    return total


def _case_read_files(p: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    n = _read_tree(Path(p["path"]))
    return {"seconds": time.perf_counter() - t0, "bytes": n}


def _case_store_read(p: dict[str, Any]) -> dict[str, Any]:
    """Reading a stored model's files without safeload: the folder is looked up before the clock starts."""
    folder = Path(_fetch(p)().folder)
    t0 = time.perf_counter()
    n = _read_tree(folder)
    return {"seconds": time.perf_counter() - t0, "bytes": n}


def _fetch(p: dict[str, Any]) -> Callable[[], Any]:
    fetch_model = _require("safeload._trust.resolve", "fetch_model")
    return lambda: fetch_model(p["name"], progress=False)


def _case_verify_cold(p: dict[str, Any]) -> dict[str, Any]:
    fetch = _fetch(p)
    rss0 = _rss_now()
    t0 = time.perf_counter()
    fetch()
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "bytes": p["nbytes"], "throughput": p["nbytes"] / elapsed, "rss_before": rss0}


def _case_verify_staged(p: dict[str, Any]) -> dict[str, Any]:
    """The verification step of a Hub fetch: files a registry delivered into the store's private staging
    folder are hashed in place against their pins and become blobs (``Store.ingest_owned``, in parallel,
    exactly as ``fetch_model`` runs it). The delivery itself (a copy, standing in for the download) is
    made and flushed before the clock starts."""
    load_policy = _require("safeload.policy", "load_policy")
    store_cls = _require("safeload._trust.store", "Store")
    parallel = _require("safeload._trust.hashing", "parallel")
    policy = load_policy()
    store = store_cls(policy.store)
    pins: dict[str, str] = p["pins"]
    with store.staging() as staging:
        delivered = []
        for name in sorted(pins):
            shutil.copyfile(Path(p["path"]) / name, staging / name)  # what a download leaves, in the cache
            delivered.append(staging / name)
        os.sync()
        t0 = time.perf_counter()
        parallel(lambda f: store.ingest_owned(f, staging, expected=pins[f.name], what=f.name), delivered)
        elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "bytes": p["nbytes"], "throughput": p["nbytes"] / elapsed}


def _case_store_warm(p: dict[str, Any]) -> dict[str, Any]:
    fetch = _fetch(p)
    t0 = time.perf_counter()
    fetched = fetch()
    n = _read_tree(Path(fetched.folder))
    return {"seconds": time.perf_counter() - t0, "bytes": n}


def _import_model_class(config_dir: str) -> None:
    """Import the model's modelling module outside the clock (both sides would pay it alike)."""
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(config_dir, local_files_only=True)
    AutoModel._model_mapping[type(cfg)]


def _case_hf_plain(p: dict[str, Any]) -> dict[str, Any]:
    import torch  # noqa: F401
    from transformers import AutoModel

    _import_model_class(p["path"])
    kw = {"use_safetensors": p["use_safetensors"], "local_files_only": True}
    return _timed(lambda: AutoModel.from_pretrained(p["path"], **kw))


def _case_hf_safeload(p: dict[str, Any]) -> dict[str, Any]:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    auto = _require("safeload.transformers", "AutoModel")
    if not hasattr(auto, "from_pretrained"):
        raise NotAvailable("safeload.transformers.AutoModel.from_pretrained not implemented yet")
    _import_model_class(p["config_dir"])
    return _timed(lambda: auto.from_pretrained(p["name"]))


CASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "torch_load": _case_torch_load,
    "pickle_load": _case_pickle_load,
    "safetensors": _case_safetensors,
    "safeload_load": _case_safeload_load,
    "python_start": _case_python_start,
    "jail_start": _case_jail_start,
    "sha256": _case_sha256,
    "read_files": _case_read_files,
    "store_read": _case_store_read,
    "verify_cold": _case_verify_cold,
    "verify_staged": _case_verify_staged,
    "store_warm": _case_store_warm,
    "hf_plain": _case_hf_plain,
    "hf_safeload": _case_hf_safeload,
}


def _run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any]
    try:
        case = CASES[spec["case"]]
        if spec.get("profile"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            out = {"status": "ok", **prof.runcall(case, spec.get("params", {}))}
            stats = pstats.Stats(prof, stream=sys.stderr)
            stats.sort_stats("cumulative").print_stats(30)
            stats.sort_stats("tottime").print_stats(15)
        else:
            out = {"status": "ok", **case(spec.get("params", {}))}
    except NotAvailable as exc:
        out = {"status": "na", "reason": str(exc)}
    except Exception as exc:
        print(traceback.format_exc(limit=8), file=sys.stderr)
        out = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["peak_rss"] = me.ru_maxrss * 1024
    # Polluted by fork (see _ChildPeaks); kept in results.json for completeness only.
    out["peak_rss_children_rusage"] = kids.ru_maxrss * 1024
    return out


# Third-party modules every measured path imports anyway. The server imports them once, then forks a
# fresh process per measurement: the same state a new interpreter has after its imports, without paying
# several seconds of start-up per measurement. safeload itself is imported only in the forked process,
# so no policy or store state can carry over from one measurement to the next.
_PRELOAD = ("numpy", "torch", "safetensors.torch", "transformers", "transformers.modeling_utils")


def _serve(timeout_s: float) -> int:
    import importlib
    import signal
    import threading

    for mod in _PRELOAD:
        importlib.import_module(mod)
    if threading.active_count() != 1:
        print(f"bench: {threading.active_count()} threads after preloading; forking may be unsafe",
              file=sys.stderr)
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the measured process
            code = 0
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDONLY)
                log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.environ.clear()
                os.environ.update(req["env"])
                os.chdir(req["cwd"])
                out = _run_spec(req["spec"])
                with open(req["result"], "w", encoding="utf-8") as f:
                    json.dump(out, f)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout_s
        status: int | str | None = None
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
            elif time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = "timeout"
            else:
                time.sleep(0.002)
        print(json.dumps({"exit": status}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--serve":
        return _serve(float(argv[1]))
    out = _run_spec(json.loads(argv[0]))
    sys.stdout.flush()
    print(MARK + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
