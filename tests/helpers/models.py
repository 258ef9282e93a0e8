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
from safetensors.torch import load_file

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
    import sys, torch, transformers
    from safetensors.torch import save_file
    folder, cls_name, ids, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    cls = getattr(transformers, cls_name)
    model = cls.from_pretrained(folder, trust_remote_code=False).eval()
    input_ids = torch.tensor([[int(x) for x in ids.split(",")]], dtype=torch.long)
    with torch.no_grad():
        out_t = model(input_ids=input_ids)
    value = out_t.logits if hasattr(out_t, "logits") and out_t.logits is not None else out_t.last_hidden_state
    save_file({"logits": value.contiguous()}, out)
    """
)


def reference_logits(folder: Path, cls_name: str, input_ids: torch.Tensor, scratch: Path) -> torch.Tensor:
    """Logits from plain ``transformers.<cls_name>.from_pretrained(folder)`` run in a throwaway process.

    The subprocess may call ``torch.load`` on the folder's ``.bin`` files; the test process never does.
    """
    out = scratch / f"reference-{os.getpid()}-{cls_name}.safetensors"
    ids = ",".join(str(int(x)) for x in input_ids.flatten().tolist())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFELOAD")}
    env["HF_HUB_OFFLINE"] = "1"
    subprocess.run(
        [sys.executable, "-c", _REFERENCE, str(folder), cls_name, ids, str(out)],
        check=True, env=env, capture_output=True, timeout=120,
    )
    logits = load_file(out)["logits"]
    out.unlink()
    return logits


def logits(model: Any, input_ids: torch.Tensor = INPUT_IDS) -> torch.Tensor:
    """The model's logits (or last hidden state for bare encoders) on ``input_ids``, without gradients."""
    with torch.no_grad():
        out = model(input_ids=input_ids)
    value = getattr(out, "logits", None)
    return value if value is not None else out.last_hidden_state
