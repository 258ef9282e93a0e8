"""The public surface is what the README and docs document, and a new public name is a deliberate change.

Every module of the package whose dotted path has no ``_``-prefixed part is public; each must be listed
here, and its ``__all__`` must equal the list. Adding a name means documenting it and adding it here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import safeload

_ERRORS = [
    "AuditLogError",
    "BomError",
    "DeviceUnavailableError",
    "EvaluationError",
    "IntegrityError",
    "MissingModuleError",
    "PolicyError",
    "RegistryUnavailableError",
    "SafeloadError",
    "SandboxError",
    "SandboxLimitError",
    "SandboxTimeoutError",
    "SandboxUnavailableError",
    "SignatureError",
    "StoreAccessError",
    "UnsafeContentError",
    "UnsafeStoreError",
    "UnsupportedFormatError",
    "UntrustedSourceError",
]

# The transformers drop-in: every Auto class it wraps, and pipeline (README, "Using it").
_TRANSFORMERS = [
    "AutoBackbone",
    "AutoConfig",
    "AutoFeatureExtractor",
    "AutoImageProcessor",
    "AutoModel",
    "AutoModelForAudioClassification",
    "AutoModelForAudioFrameClassification",
    "AutoModelForAudioXVector",
    "AutoModelForCTC",
    "AutoModelForCausalLM",
    "AutoModelForDepthEstimation",
    "AutoModelForDocumentQuestionAnswering",
    "AutoModelForImageClassification",
    "AutoModelForImageSegmentation",
    "AutoModelForImageTextToText",
    "AutoModelForImageToImage",
    "AutoModelForInstanceSegmentation",
    "AutoModelForKeypointDetection",
    "AutoModelForMaskGeneration",
    "AutoModelForMaskedImageModeling",
    "AutoModelForMaskedLM",
    "AutoModelForMultipleChoice",
    "AutoModelForNextSentencePrediction",
    "AutoModelForObjectDetection",
    "AutoModelForPreTraining",
    "AutoModelForQuestionAnswering",
    "AutoModelForSemanticSegmentation",
    "AutoModelForSeq2SeqLM",
    "AutoModelForSequenceClassification",
    "AutoModelForSpeechSeq2Seq",
    "AutoModelForTableQuestionAnswering",
    "AutoModelForTextEncoding",
    "AutoModelForTextToSpectrogram",
    "AutoModelForTextToWaveform",
    "AutoModelForTokenClassification",
    "AutoModelForUniversalSegmentation",
    "AutoModelForVideoClassification",
    "AutoModelForVisualQuestionAnswering",
    "AutoModelForZeroShotImageClassification",
    "AutoModelForZeroShotObjectDetection",
    "AutoProcessor",
    "AutoTokenizer",
    "AutoVideoProcessor",
    "pipeline",
]

# The command modules' contract with safeload.cli: each adds its subcommand's parser and runs it.
_COMMAND = ["add_parser", "run"]

EXPECTED: dict[str, list[str]] = {
    "safeload": [*_ERRORS, "Stub", "__version__", "jail_tier", "load", "patch", "state_dict", "unpatch"],
    "safeload.errors": _ERRORS,
    "safeload.transformers": _TRANSFORMERS,
    "safeload.policy": ["ModelEntry", "Policy", "load_policy", "parse_policy"],
    "safeload.hub": ["UnpinnedFileError", "hf_hub_download", "snapshot_download"],
    "safeload.sentence_transformers": ["SentenceTransformer"],
    "safeload.peft": ["PeftModel"],
    "safeload.diffusers": ["DiffusionPipeline"],  # and every diffusers class, resolved on first use
    "safeload.sklearn": ["load"],
    "safeload.kserve": ["main"],  # python -m safeload.kserve
    "safeload.mlflow": ["Verified", "fetch"],
    "safeload.mlflow.pyfunc": ["PyFuncModel", "load_model"],
    "safeload.mlflow.pytorch": ["load_model"],
    "safeload.mlflow.sklearn": ["load_model"],
    "safeload.mlflow.transformers": ["load_model"],
    "safeload.cli": ["main"],  # the safeload command
    "safeload.cli.attest": _COMMAND,
    "safeload.cli.bom": _COMMAND,
    "safeload.cli.convert": _COMMAND,
    "safeload.cli.doctor": _COMMAND,
    "safeload.cli.gc": _COMMAND,
    "safeload.cli.init": _COMMAND,
    "safeload.cli.inspect": ["CODE_BEARING_GLOBALS", "CODE_BEARING_MODULES", *_COMMAND],  # docs/cli.md
    "safeload.cli.pin": _COMMAND,
    "safeload.cli.policy": _COMMAND,
    "safeload.cli.prefetch": _COMMAND,
    "safeload.cli.push": _COMMAND,
    "safeload.cli.verify": _COMMAND,
}


def _public_modules() -> list[str]:
    """Every public module in the source tree (found by file, so none is missed by an import failure)."""
    root = Path(safeload.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts[1:]):
            continue  # the private layers, the jail's code, __main__
        found.append(".".join(parts))
    return found


def test_every_public_module_is_listed() -> None:
    unlisted = [m for m in _public_modules() if m not in EXPECTED]
    assert unlisted == [], f"new public modules: document them and list them in EXPECTED: {unlisted}"


@pytest.mark.parametrize("name", _public_modules())
def test_all_is_exactly_what_is_documented(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # an optional extra (peft, diffusers...) that is not installed
        if exc.name is not None and exc.name.split(".")[0] != "safeload":
            pytest.skip(f"{name} needs {exc.name}")
        raise
    assert sorted(module.__all__) == sorted(EXPECTED[name])
    assert len(set(module.__all__)) == len(module.__all__)
    for attr in module.__all__:
        assert getattr(module, attr) is not None, f"{name}.{attr} is in __all__ but missing"
