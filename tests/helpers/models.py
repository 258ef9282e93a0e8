"""Tiny random transformers models, saved the ways real repositories ship them.

Each builder returns a model with seeded random weights; :func:`save_model` writes it as
``model.safetensors`` (transformers' own ``save_pretrained``), as a single ``pytorch_model.bin`` or as
sharded ``.bin`` files with ``pytorch_model.bin.index.json``. The ``.bin`` files are written with
``torch.save(model.state_dict())`` so tied weights keep sharing one storage, as in older checkpoints.

Reference outputs from plain transformers on ``.bin`` files need ``torch.load``, which the test process
forbids; :func:`reference_logits` computes them in a throwaway subprocess and hands them back as
safetensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import torch
import torch._dynamo
import transformers.models.bert.modeling_bert
import transformers.models.gpt2.modeling_gpt2  # noqa: F401
from safetensors.torch import load_file

# The imports marked noqa pull in modules that subclass pickle.Unpickler while being imported: they must
# be imported before the suite's host guard replaces it.

Layout = Literal["safetensors", "bin", "sharded_bin"]

INPUT_IDS = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4]], dtype=torch.long)


def tiny_gpt2(seed: int = 0) -> Any:
    """A GPT-2-style causal LM whose ``lm_head`` is tied to the token embeddings."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    return model


def tiny_bert(seed: int = 0) -> Any:
    """A BERT-style encoder with a masked-LM head (its decoder is tied to the word embeddings)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertForMaskedLM(config).eval()


def save_model(model: Any, folder: Path, layout: Layout, *, shards: int = 3) -> Path:
    """Write ``model`` into ``folder`` (created) in ``layout``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "safetensors":
        model.save_pretrained(folder)
        return folder
    model.config.save_pretrained(folder)
    state = model.state_dict()
    if layout == "bin":
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    names = list(state)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: state[k] for k in part}, folder / fname)
        for k in part:
            weight_map[k] = fname
            total += state[k].numel() * state[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_tokenizer(folder: Path) -> Path:
    """A small word-level fast tokenizer (``tokenizer.json`` + config) for the tiny models' vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for i, word in enumerate("the a cat dog sat on mat model weights load safely".split()):
        vocab[word] = 5 + i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(folder)
    return folder


_REFERENCE = textwrap.dedent(
    """
    import json, sys, torch, transformers
    from safetensors.torch import save_file
    jobs, ids, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    input_ids = torch.tensor([[int(x) for x in ids.split(",")]], dtype=torch.long)
    result = {}
    for i, (folder, cls_name) in enumerate(jobs):
        model = getattr(transformers, cls_name).from_pretrained(folder, trust_remote_code=False).eval()
        with torch.no_grad():
            o = model(input_ids=input_ids)
        value = getattr(o, "logits", None)
        result[str(i)] = (value if value is not None else o.last_hidden_state).contiguous()
    save_file(result, out)
    """
)


def reference_logits(
    jobs: list[tuple[Path, str]], input_ids: torch.Tensor, scratch: Path
) -> list[torch.Tensor]:
    """Logits from plain ``transformers.<cls>.from_pretrained(folder)`` for each job, in a throwaway process.

    The subprocess may call ``torch.load`` on the folders' ``.bin`` files; the test process never does.
    """
    out = scratch / f"reference-{os.getpid()}.safetensors"
    ids = ",".join(str(int(x)) for x in input_ids.flatten().tolist())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFELOAD")}
    env["HF_HUB_OFFLINE"] = "1"
    spec = json.dumps([[str(folder), cls] for folder, cls in jobs])
    subprocess.run(
        [sys.executable, "-c", _REFERENCE, spec, ids, str(out)],
        check=True, env=env, capture_output=True, timeout=300,
    )
    result = load_file(out)
    out.unlink()
    return [result[str(i)] for i in range(len(jobs))]


def logits(model: Any, input_ids: torch.Tensor = INPUT_IDS) -> torch.Tensor:
    """The model's logits (or last hidden state for bare encoders) on ``input_ids``, without gradients."""
    with torch.no_grad():
        out = model(input_ids=input_ids)
    value = getattr(out, "logits", None)
    return value if value is not None else out.last_hidden_state
