"""``safeload convert``: pickle checkpoints to safetensors, opened only inside the jail."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_ERROR, EXIT_OK, UI
from safeload.errors import UnsupportedFormatError

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Convert a pickle checkpoint (torch zip or legacy, raw pickle) holding a state dict, or a numpy .npz
archive of named numeric arrays, into safetensors. The checkpoint is opened by safeload.load with the
inert unpickler inside the jail, so none of its code runs anywhere. Only tensors are written: other
entries (sibling entries such as config_dict or epoch, stubs of classes or of code a payload tried to
call, counters, strings) are left out and listed in the output (left_out with --json); with
--weights-only a checkpoint that references any global that is not plain data is refused instead.

The state dict is the top level, or one of the usual wrappers (state_dict, model_state_dict, model,
module); one nested deeper is named with --key, a dotted path (--key model.state_dict). A checkpoint
without tensors at the top level is refused with the --key paths that hold a state dict.

Tensors that share storage (tied embeddings) are written as separate copies under every name, the way
transformers expects to re-tie them.

Given a model folder, converts pytorch_model.bin, or every shard of a sharded checkpoint named by
pytorch_model.bin.index.json (writing model.safetensors.index.json), into the output folder and copies the
folder's other non-pickle files (config, tokenizer) next to them, so the output loads with
use_safetensors=True.

Each output file's metadata records the source's sha256 (safeload.source_sha256) and the converter's
version (safeload.version).

With --to skops, a scikit-learn pickle or joblib file is unpickled for real inside the jail (its own code
runs there and nowhere else) and written there as a skops file; an object that holds a function, method or
lambda (a FunctionTransformer with a func) is refused. The types a loader will have to trust by name
(skops.io.load(OUT, trusted=[...]), safeload.sklearn.load(OUT, trusted=[...])) are printed."""

_EPILOG = """\
examples:
  safeload convert pytorch_model.bin model.safetensors
  safeload convert ./my-model -o ./my-model-safetensors
  safeload convert lightning.ckpt weights.safetensors --key state_dict --json
  safeload convert train.pt weights.safetensors --key model.state_dict
  safeload convert arrays.npz arrays.safetensors
  safeload convert model.pkl --to skops -o model.skops

exit codes: 0 converted, 1 refused (--weights-only and non-data globals, [files] pin mismatch), 2 error."""

# Files in a model folder that are pickles (never copied; the weights among them are converted).
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz")


@dataclass(frozen=True)
class _Converted:
    source: Path
    output: Path
    source_sha256: str
    tensors: int
    left_out: tuple[str, ...] = ()


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "convert",
        help="convert a pickle checkpoint or model folder to safetensors",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument("input", metavar="IN", type=Path, help="a checkpoint file or a model folder")
    parser.add_argument(
        "out",
        metavar="OUT",
        type=Path,
        nargs="?",
        help="the .safetensors file to write (for a folder: the output folder); or give it with -o",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        type=Path,
        help="the .safetensors file to write (for a folder: the output folder)",
    )
    parser.add_argument(
        "--key",
        metavar="PATH",
        help="the dotted key path of a nested state dict (model.state_dict)",
    )
    parser.add_argument(
        "--encoding",
        default="utf-8",
        help="how to decode the strings of a pickle written by Python 2, as torch.load(encoding=...) "
        "takes it: latin1 for numpy arrays and most such files, bytes to keep them as bytes",
    )
    parser.add_argument(
        "--to",
        choices=("safetensors", "skops"),
        default="safetensors",
        help="the output format: safetensors (default), or skops for a scikit-learn pickle or joblib file",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="refuse a checkpoint that references any global that is not plain data (exit 1)",
    )
    add_policy(parser)
    parser.set_defaults(run=run)


def _metadata(digest: str) -> dict[str, str]:
    from safeload import __version__

    return {"safeload.source_sha256": digest, "safeload.version": __version__}


def _tensor_count(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return len(list(f.keys()))


def _convert_one(src: Path, dst: Path, args: argparse.Namespace) -> _Converted:
    from safeload._loading.convert import convert_checkpoint, sha256_file

    digest = sha256_file(src)
    done = convert_checkpoint(
        src,
        dst,
        policy=args.loaded_policy,
        metadata=_metadata(digest),
        weights_only=args.weights_only,
        key=args.key,
        encoding=args.encoding,
    )
    return _Converted(src, done.output, digest, _tensor_count(done.output), done.left_out)


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(17, "output exists (pass --force to overwrite)", str(path))


def _convert_folder(
    src: Path, dst: Path, args: argparse.Namespace, ui: UI
) -> tuple[list[_Converted], Path | None]:
    from safeload._loading.convert import converted_index, safetensors_name

    index = src / "pytorch_model.bin.index.json"
    new_doc: dict[str, Any] | None = None
    if index.is_file():
        new_doc = converted_index(index)  # validates shard names before any shard is opened
        source_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        sources = [(src / shard, dst / safetensors_name(shard)) for shard in sorted(set(source_map.values()))]
    elif (src / "pytorch_model.bin").is_file():
        sources = [(src / "pytorch_model.bin", dst / "model.safetensors")]
    else:
        raise UnsupportedFormatError(
            f"{src} has neither pytorch_model.bin nor pytorch_model.bin.index.json; "
            "convert a single checkpoint with `safeload convert FILE -o OUT.safetensors`"
        )
    for _, out in sources:
        _check_output(out, args.force)
    dst.mkdir(parents=True, exist_ok=True)
    done: list[_Converted] = []
    total = sum(s.stat().st_size for s, _ in sources)
    with ui.progress() as bar:
        advanced = 0
        bar("convert", 0, total)
        for shard, out in sources:
            done.append(_convert_one(shard, out, args))
            advanced += shard.stat().st_size
            bar("convert", advanced, total)
    new_index: Path | None = None
    if new_doc is not None:
        new_index = dst / "model.safetensors.index.json"
        new_index.write_text(json.dumps(new_doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    written = {out for _, out in sources} | ({new_index} if new_index else set())
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if item.is_symlink() or not item.is_file() or item.name.endswith(_PICKLE_SUFFIXES):
            continue
        if rel.as_posix() == "pytorch_model.bin.index.json" or rel.parts[0] == ".git":
            continue
        target = dst / rel
        if target in written or (target.exists() and not args.force):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item, target)
    return done, new_index


def _run_skops(src: Path, args: argparse.Namespace, ui: UI) -> int:
    from safeload._loading.convert import sha256_file
    from safeload.sklearn import convert

    if src.is_dir():
        ui.error("--to skops converts one pickle or joblib file, not a folder")
        return EXIT_ERROR
    if args.key is not None or args.weights_only or args.encoding != "utf-8":
        ui.error("--key, --weights-only and --encoding apply to safetensors output, not to --to skops")
        return EXIT_ERROR
    _check_output(args.output, args.force)
    digest = sha256_file(src)
    done = convert(src, args.output, policy=args.loaded_policy)
    data = {
        "input": str(src),
        "output": str(done.output),
        "format": "skops",
        "source_sha256": digest,
        "untrusted_types": list(done.untrusted),
    }

    def render(out: Console) -> None:
        out.print(f"{src} -> {done.output}  (skops, source sha256:{digest})", markup=False)
        if done.untrusted:
            out.print(
                "  types a loader must trust by name: " + ", ".join(done.untrusted), markup=False
            )
            out.print(
                f"  load with: safeload.sklearn.load({str(done.output)!r}, trusted={list(done.untrusted)!r})",
                markup=False,
            )
        else:
            out.print("  no types beyond skops's own trusted set", markup=False)

    ui.emit(data, render)
    return EXIT_OK


def run(args: argparse.Namespace, ui: UI) -> int:
    if args.out is not None and args.output is not None:
        ui.error("give OUT once: as the second argument or with -o, not both")
        return EXIT_ERROR
    args.output = args.out if args.out is not None else args.output
    if args.output is None:
        ui.error("name the output: `safeload convert IN OUT` (or -o OUT)")
        return EXIT_ERROR
    args.loaded_policy = load_policy(args)
    src: Path = args.input
    if not src.exists():
        raise FileNotFoundError(2, "no such file or folder", str(src))
    if args.to == "skops":
        return _run_skops(src, args, ui)
    index: Path | None = None
    if src.is_dir():
        done, index = _convert_folder(src, args.output, args, ui)
    else:
        _check_output(args.output, args.force)
        with ui.progress() as bar:
            size = src.stat().st_size
            bar("convert", 0, size)
            done = [_convert_one(src, args.output, args)]
            bar("convert", size, size)
    data = {
        "input": str(src),
        "output": str(args.output),
        "index": str(index) if index else None,
        "files": [
            {
                "source": str(c.source),
                "output": str(c.output),
                "source_sha256": c.source_sha256,
                "tensors": c.tensors,
                "left_out": list(c.left_out),
            }
            for c in done
        ],
    }

    def render(out: Console) -> None:
        for c in done:
            out.print(
                f"{c.source} -> {c.output}  ({c.tensors} tensors, source sha256:{c.source_sha256})",
                markup=False,
            )
            if c.left_out:
                out.print(f"  left out (not tensors): {', '.join(c.left_out)}", markup=False)
        if index is not None:
            out.print(f"index -> {index}")

    ui.emit(data, render)
    return EXIT_OK
