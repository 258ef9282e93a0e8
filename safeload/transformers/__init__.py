"""Drop-in for ``transformers``' Auto classes and ``pipeline``: change one import, keep the code.

::

    from safeload.transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("acme/sentiment", dtype="auto")

A name resolves only through ``trust.toml``; the pinned files are fetched and verified into the store,
``.bin`` weights are converted to safetensors inside the jail (once, cached by the source's sha256), and
the real transformers ``from_pretrained`` runs on the verified local folder with ``use_safetensors=True``,
``local_files_only=True`` and ``trust_remote_code`` only where the policy allows code. While it runs,
every host unpickling entry point refuses (``UnsafeContentError``), so no path inside transformers can
unpickle a file of the repository in this process. A local folder path works too: its pickles go through
the jail, and files pinned under ``[files]`` are verified.

Every class here is a subclass of the transformers class of the same name; only ``from_pretrained`` is
replaced, so ``from_config``, ``register`` and the rest behave as in transformers.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import transformers as _hf

from safeload._integrations.dropin import drop_in
from safeload._integrations.folder import Prepared, prepare
from safeload._integrations.guard import inside, refuse_host_unpickling
from safeload.errors import UnsafeContentError, UntrustedSourceError

__all__ = [
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

# Hub arguments that make no sense for a verified local folder; dropped before transformers sees them.
_HUB_KWARGS = (
    "cache_dir", "force_download", "resume_download", "proxies", "token", "use_auth_token", "mirror",
)
_ADAPTER_KWARGS = ("adapter_kwargs", "_adapter_model_path", "adapter_name", "load_adapter")
_LOADER_ARGS = ("config", "tokenizer", "feature_extractor", "image_processor", "video_processor", "processor")


def _is_model_class(cls: type) -> bool:
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    return issubclass(cls, _hf.PreTrainedModel | _BaseAutoModelClass)


def _check_model_kwargs(kwargs: dict[str, Any]) -> None:
    if kwargs.get("use_safetensors") is False:
        raise UnsafeContentError(
            "use_safetensors=False asks transformers to unpickle weights in this process; safeload converts "
            "'.bin' weights to safetensors in the jail instead: drop the argument"
        )
    if kwargs.get("weights_only") is False:
        raise UnsafeContentError(
            "weights_only=False asks transformers to unpickle weights in this process; drop the argument"
        )
    for key in _ADAPTER_KWARGS:
        if kwargs.get(key):
            raise UntrustedSourceError(
                f"{key}= loads an adapter from outside the pinned model; load the base model through "
                "safeload.transformers and apply the adapter with peft from a verified folder"
            )
    gguf = kwargs.get("gguf_file")
    if gguf is not None and (os.path.isabs(os.fspath(gguf)) or ".." in os.fspath(gguf).split("/")):
        raise UntrustedSourceError(
            f"gguf_file={gguf!r} must name a file of the pinned model folder (a relative path inside it)"
        )


def _resolve_side_arg(value: Any, revision: str | None) -> Any:
    """A ``config=``/``tokenizer=`` argument that is a name or path resolves like the model itself."""
    if isinstance(value, str | os.PathLike):
        return str(prepare(value, weights=False, trust_remote_code=False, revision=revision).folder)
    return value


def from_pretrained(cls: Any, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``cls.from_pretrained`` (a transformers class) on the verified folder for a name or path.

    This is what every class of this module and ``safeload.patch()`` call. ``cls`` is the transformers
    class itself (``transformers.AutoModel``, ``transformers.BertModel``, ``transformers.AutoTokenizer``...).

    Raises:
        UntrustedSourceError: the name is not pinned in the policy, the revision differs from the pin,
            remote code is asked for and not allowed, or the model points at another repository.
        UnsafeContentError: the model (or the caller) would make transformers unpickle in this process.
        IntegrityError, SignatureError: the files do not match their pins or signature.
        SandboxError, UnsupportedFormatError: converting pickle weights in the jail failed.
    """
    if pretrained_model_name_or_path is None:
        # config + state_dict: nothing is read from disk.
        with refuse_host_unpickling(), inside():
            return cls.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
    is_model = _is_model_class(cls)
    kwargs = dict(kwargs)
    if is_model:
        _check_model_kwargs(kwargs)
    subfolder = os.fspath(kwargs.get("subfolder") or "")
    if os.path.isabs(subfolder) or ".." in subfolder.replace("\\", "/").split("/"):
        raise UntrustedSourceError(f"subfolder={subfolder!r} must be a relative path inside the model folder")
    revision = kwargs.pop("revision", None)
    for key in _HUB_KWARGS:
        kwargs.pop(key, None)
    kwargs.pop("local_files_only", None)
    want_code = bool(kwargs.pop("trust_remote_code", False))
    prepared = prepare(
        pretrained_model_name_or_path, weights=is_model, trust_remote_code=want_code, revision=revision
    )
    if "config" in kwargs:
        kwargs["config"] = _resolve_side_arg(kwargs["config"], None)
    kwargs.update(local_files_only=True, trust_remote_code=prepared.allow_code)
    if is_model:
        kwargs.update(use_safetensors=True)
    with refuse_host_unpickling(), inside():
        return cls.from_pretrained(str(prepared.folder), *args, **kwargs)


def _wrap(cls: type) -> type:
    return drop_in(cls, from_pretrained, module=__name__, library="transformers'")


AutoBackbone = _wrap(_hf.AutoBackbone)
AutoConfig = _wrap(_hf.AutoConfig)
AutoFeatureExtractor = _wrap(_hf.AutoFeatureExtractor)
AutoImageProcessor = _wrap(_hf.AutoImageProcessor)
AutoModel = _wrap(_hf.AutoModel)
AutoModelForAudioClassification = _wrap(_hf.AutoModelForAudioClassification)
AutoModelForAudioFrameClassification = _wrap(_hf.AutoModelForAudioFrameClassification)
AutoModelForAudioXVector = _wrap(_hf.AutoModelForAudioXVector)
AutoModelForCTC = _wrap(_hf.AutoModelForCTC)
AutoModelForCausalLM = _wrap(_hf.AutoModelForCausalLM)
AutoModelForDepthEstimation = _wrap(_hf.AutoModelForDepthEstimation)
AutoModelForDocumentQuestionAnswering = _wrap(_hf.AutoModelForDocumentQuestionAnswering)
AutoModelForImageClassification = _wrap(_hf.AutoModelForImageClassification)
AutoModelForImageSegmentation = _wrap(_hf.AutoModelForImageSegmentation)
AutoModelForImageTextToText = _wrap(_hf.AutoModelForImageTextToText)
AutoModelForImageToImage = _wrap(_hf.AutoModelForImageToImage)
AutoModelForInstanceSegmentation = _wrap(_hf.AutoModelForInstanceSegmentation)
AutoModelForKeypointDetection = _wrap(_hf.AutoModelForKeypointDetection)
AutoModelForMaskGeneration = _wrap(_hf.AutoModelForMaskGeneration)
AutoModelForMaskedImageModeling = _wrap(_hf.AutoModelForMaskedImageModeling)
AutoModelForMaskedLM = _wrap(_hf.AutoModelForMaskedLM)
AutoModelForMultipleChoice = _wrap(_hf.AutoModelForMultipleChoice)
AutoModelForNextSentencePrediction = _wrap(_hf.AutoModelForNextSentencePrediction)
AutoModelForObjectDetection = _wrap(_hf.AutoModelForObjectDetection)
AutoModelForPreTraining = _wrap(_hf.AutoModelForPreTraining)
AutoModelForQuestionAnswering = _wrap(_hf.AutoModelForQuestionAnswering)
AutoModelForSemanticSegmentation = _wrap(_hf.AutoModelForSemanticSegmentation)
AutoModelForSeq2SeqLM = _wrap(_hf.AutoModelForSeq2SeqLM)
AutoModelForSequenceClassification = _wrap(_hf.AutoModelForSequenceClassification)
AutoModelForSpeechSeq2Seq = _wrap(_hf.AutoModelForSpeechSeq2Seq)
AutoModelForTableQuestionAnswering = _wrap(_hf.AutoModelForTableQuestionAnswering)
AutoModelForTextEncoding = _wrap(_hf.AutoModelForTextEncoding)
AutoModelForTextToSpectrogram = _wrap(_hf.AutoModelForTextToSpectrogram)
AutoModelForTextToWaveform = _wrap(_hf.AutoModelForTextToWaveform)
AutoModelForTokenClassification = _wrap(_hf.AutoModelForTokenClassification)
AutoModelForUniversalSegmentation = _wrap(_hf.AutoModelForUniversalSegmentation)
AutoModelForVideoClassification = _wrap(_hf.AutoModelForVideoClassification)
AutoModelForVisualQuestionAnswering = _wrap(_hf.AutoModelForVisualQuestionAnswering)
AutoModelForZeroShotImageClassification = _wrap(_hf.AutoModelForZeroShotImageClassification)
AutoModelForZeroShotObjectDetection = _wrap(_hf.AutoModelForZeroShotObjectDetection)
AutoProcessor = _wrap(_hf.AutoProcessor)
AutoTokenizer = _wrap(_hf.AutoTokenizer)
AutoVideoProcessor = _wrap(_hf.AutoVideoProcessor)


def pipeline(*args: Any, **kwargs: Any) -> Any:
    """Like ``transformers.pipeline``, with ``model`` (and ``config``/``tokenizer``/... given as names or
    paths) resolved through ``trust.toml`` and verified first. ``task`` must be given when ``model`` is a
    name: inferring it would ask the public Hub.

    Raises:
        The errors of :func:`from_pretrained`; ``UntrustedSourceError`` without ``model`` (the task's
        default model would come from the public Hub); ``ValueError`` when ``task`` is missing for a
        named model.
    """
    return _pipeline(_hf.pipeline, *args, **kwargs)


def _pipeline(real: Any, *args: Any, **kwargs: Any) -> Any:
    bound = inspect.signature(real).bind_partial(*args, **kwargs)
    arguments = bound.arguments
    extra = dict(arguments.pop("kwargs", {}))
    model = arguments.get("model")
    revision = arguments.pop("revision", None)
    want_code = bool(arguments.pop("trust_remote_code", False))
    arguments.pop("token", None)
    model_kwargs = dict(arguments.get("model_kwargs") or {})
    _check_model_kwargs(model_kwargs)
    for key in _HUB_KWARGS:
        model_kwargs.pop(key, None)
    prepared: Prepared | None = None
    if isinstance(model, str | os.PathLike):
        if arguments.get("task") is None:
            raise ValueError(
                "pipeline(model=...) needs task= with safeload: inferring the task would query the Hub"
            )
        prepared = prepare(model, weights=True, trust_remote_code=want_code, revision=revision)
        arguments["model"] = str(prepared.folder)
    elif model is None:
        raise UntrustedSourceError(
            "pipeline() without model= would download the task's default model from the public Hub; "
            "pass model= with a name pinned in trust.toml"
        )
    elif want_code:
        raise UntrustedSourceError("trust_remote_code=True needs model= to be a name pinned in trust.toml")
    for key in _LOADER_ARGS:
        if key in arguments:
            arguments[key] = _resolve_side_arg(arguments[key], None)
    model_kwargs.pop("local_files_only", None)
    model_kwargs.update(use_safetensors=True)
    arguments["model_kwargs"] = model_kwargs
    extra["local_files_only"] = True
    arguments["trust_remote_code"] = prepared.allow_code if prepared is not None else False
    with refuse_host_unpickling(), inside():
        return real(**arguments, **extra)


def __getattr__(name: str) -> Any:
    if hasattr(_hf, name) and hasattr(getattr(_hf, name), "from_pretrained"):
        raise AttributeError(
            f"safeload.transformers has no {name}: import the Auto* classes from here, or call "
            "safeload.patch() to route transformers' own classes through safeload"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
