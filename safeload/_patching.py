"""``safeload.patch()``: route third-party ``torch.load`` and ``from_pretrained`` calls through safeload.

For code that cannot change its imports (a library that calls ``torch.load`` or
``AutoModel.from_pretrained`` itself)::

    safeload.patch()            # stays until safeload.unpatch()
    with safeload.patch():      # or only for the block; the originals come back exactly on exit
        third_party.load_everything()

While patched, ``torch.load`` (and ``torch.serialization.load``) is ``safeload.load`` with torch's
signature, and ``from_pretrained`` of ``PreTrainedModel``, the ``Auto*`` classes, tokenizers, configs,
processors, image processors and feature extractors goes through ``safeload.transformers``, as does
``transformers.pipeline``. huggingface_hub's ``snapshot_download`` and ``hf_hub_download`` (the module
functions, ``HfApi``'s methods, and every copy a library already imported by name, as transformers,
sentence-transformers, peft, diffusers and timm do) resolve through the policy into the verified store
(:mod:`safeload.hub`), and ``try_to_load_from_cache`` reports nothing cached, so no caller reads
huggingface_hub's unchecked cache. ``from_pretrained`` of diffusers' pipelines, models and schedulers
and of ``peft.PeftModel``, and ``sentence_transformers.SentenceTransformer(...)``, go through their
drop-ins. ``load_model`` of ``mlflow.sklearn``, ``mlflow.pytorch``, ``mlflow.transformers`` and
``mlflow.pyfunc`` goes through :mod:`safeload.mlflow` (the pinned entry, no code run; ``mlflow.pytorch``
needs ``model=``), for the flavor modules imported already and, through an import hook, those imported
while patched (patching never imports mlflow). Every request huggingface_hub's HTTP client makes
(``model_info``, ``file_exists``,
``HfFileSystem``, its session...) to an origin that is not a policy huggingface registry's endpoint is
refused before it is sent (:mod:`safeload._integrations.hub_guard`). Patching replaces
module and class attributes process-wide; of the names bound earlier by ``from X import name``, only
the hub's download functions are found and replaced (``from torch import load`` is not). While
transformers reads a model folder (inside a patched ``from_pretrained``), ``torch.load`` refuses instead
of going to the jail: nothing a model folder holds should be unpickled at that point. Patch and unpatch
from one thread, outside loads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["Patch", "patch", "unpatch"]

_lock = threading.RLock()
_saved: list[tuple[object, str, object]] = []
_undo: list[Callable[[], None]] = []
_depth = 0
_installing = False


def _torch_load(
    f: Any,
    map_location: Any = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = None,
    mmap: bool | None = None,
    **pickle_load_args: Any,
) -> Any:
    """``torch.load`` routed through ``safeload.load``: the pickle is opened in the jail.

    ``pickle_module`` and extra unpickler arguments are ignored: the jail's unpickler is the only one.
    """
    from safeload._loading.loader import load

    del pickle_module, pickle_load_args
    return load(f, map_location, weights_only=weights_only, mmap=mmap)


def _classmethod_patch(cls: type, raw: classmethod[Any, Any, Any]) -> classmethod[Any, Any, Any]:
    func = raw.__func__

    @functools.wraps(func)
    def from_pretrained(
        klass: type, pretrained_model_name_or_path: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        from safeload._integrations.guard import is_inside
        from safeload.transformers import from_pretrained as drop_in

        if is_inside():
            return func(klass, pretrained_model_name_or_path, *args, **kwargs)
        return drop_in(klass, pretrained_model_name_or_path, *args, **kwargs)

    del cls
    return classmethod(from_pretrained)


def _pipeline_patch(real: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real)
    def pipeline(*args: Any, **kwargs: Any) -> Any:
        from safeload._integrations.guard import is_inside
        from safeload.transformers import _pipeline

        if is_inside():
            return real(*args, **kwargs)
        return _pipeline(real, *args, **kwargs)

    return pipeline


def _loader_classes() -> list[type]:
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    classes: list[type] = [
        transformers.PreTrainedModel,
        _BaseAutoModelClass,
        getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig,
        transformers.PreTrainedTokenizerBase,
        transformers.ProcessorMixin,
        transformers.ImageProcessingMixin,
        transformers.FeatureExtractionMixin,
    ]
    for name in dir(transformers):
        if name.startswith("Auto") and not name.startswith("Autoformer"):
            obj = getattr(transformers, name, None)
            if isinstance(obj, type) and obj not in classes:
                classes.append(obj)
    return classes


def _targets() -> list[tuple[object, str, object]]:
    import torch
    import torch.serialization
    import transformers
    import transformers.pipelines

    out: list[tuple[object, str, object]] = [
        (torch, "load", _torch_load),
        (torch.serialization, "load", _torch_load),
    ]
    for cls in _loader_classes():
        raw = cls.__dict__.get("from_pretrained")
        if isinstance(raw, classmethod):
            out.append((cls, "from_pretrained", _classmethod_patch(cls, raw)))
    real_pipeline = transformers.pipelines.pipeline
    patched = _pipeline_patch(real_pipeline)
    out.append((transformers.pipelines, "pipeline", patched))
    out.append((transformers, "pipeline", patched))
    return out


def _drop_in_patch(
    raw: classmethod[Any, Any, Any], drop_in: Callable[..., Any]
) -> classmethod[Any, Any, Any]:
    """A library's ``from_pretrained`` classmethod that calls ``drop_in(cls, ...)`` (a safeload drop-in,
    which resolves through the policy and then calls ``cls.from_pretrained`` on the verified folder,
    reaching the original here through :func:`~safeload._integrations.guard.is_inside`)."""
    func = raw.__func__

    @functools.wraps(func)
    def from_pretrained(klass: type, *args: Any, **kwargs: Any) -> Any:
        from safeload._integrations.guard import is_inside

        if is_inside():
            return func(klass, *args, **kwargs)
        return drop_in(klass, *args, **kwargs)

    return classmethod(from_pretrained)


def _diffusers_from_pretrained(cls: type, *args: Any, **kwargs: Any) -> Any:
    from safeload.diffusers import from_pretrained

    return from_pretrained(cls, *args, **kwargs)


def _peft_from_pretrained(cls: type, *args: Any, **kwargs: Any) -> Any:
    from safeload.peft import from_pretrained

    return from_pretrained(cls, *args, **kwargs)


def _sentence_transformer_init(real: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(real)
    def __init__(self: object, model_name_or_path: Any = None, *args: Any, **kwargs: Any) -> None:
        from safeload._integrations.guard import is_inside
        from safeload.sentence_transformers import build

        if is_inside():
            return real(self, model_name_or_path, *args, **kwargs)
        return build(functools.partial(real, self), model_name_or_path, *args, **kwargs)

    return __init__


def _installed(name: str) -> bool:
    import importlib.util
    import sys

    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _library_targets() -> list[tuple[object, str, object]]:
    """``from_pretrained`` of the other libraries safeload has a drop-in for, when they are installed:
    diffusers' pipelines, models and schedulers (their base classes, and the Auto classes already
    imported), ``peft.PeftModel``, and ``sentence_transformers.SentenceTransformer`` (its constructor)."""
    import importlib
    import sys

    out: list[tuple[object, str, object]] = []
    if _installed("diffusers"):
        import diffusers

        classes: list[object] = [diffusers.DiffusionPipeline, diffusers.ModelMixin, diffusers.SchedulerMixin]
        for module_name in ("diffusers.models.auto_model", "diffusers.pipelines.auto_pipeline"):
            module = sys.modules.get(module_name)  # imported already: importing them costs seconds
            for name in dir(module) if module is not None else ():
                if name.startswith("Auto"):
                    classes.append(getattr(module, name))
        for cls in classes:
            raw = cls.__dict__.get("from_pretrained") if isinstance(cls, type) else None
            if isinstance(raw, classmethod):
                out.append((cls, "from_pretrained", _drop_in_patch(raw, _diffusers_from_pretrained)))
    if _installed("peft"):
        peft = importlib.import_module("peft")
        raw = peft.PeftModel.__dict__.get("from_pretrained")
        if isinstance(raw, classmethod):
            out.append((peft.PeftModel, "from_pretrained", _drop_in_patch(raw, _peft_from_pretrained)))
    if _installed("sentence_transformers"):
        st = importlib.import_module("sentence_transformers")
        init = st.SentenceTransformer.__dict__.get("__init__")
        if callable(init):
            out.append((st.SentenceTransformer, "__init__", _sentence_transformer_init(init)))
    return out


# mlflow flavors whose ``load_model`` goes through safeload.mlflow while patched.
_MLFLOW_FLAVORS = ("sklearn", "pytorch", "transformers", "pyfunc")


def _mlflow_route(flavor: str, model_uri: Any, *args: Any, **kwargs: Any) -> Any:
    """``mlflow.<flavor>.load_model(...)`` as ``safeload.mlflow.<flavor>.load_model(...)``, whose
    signatures match mlflow's (pytorch adds ``model=``: the module the weights go into)."""
    from safeload.errors import UnsupportedFormatError
    from safeload.mlflow import pyfunc, pytorch, sklearn, transformers

    if flavor == "pytorch" and kwargs.get("model") is None:
        raise UnsupportedFormatError(
            f"{model_uri}: mlflow.pytorch.load_model goes through safeload while patched, and a pytorch "
            "model's weights go into a module your code builds: pass model=YourModule(), or call "
            "safeload.mlflow.pytorch.load_model(uri, model=YourModule())"
        )
    modules = {"sklearn": sklearn, "pytorch": pytorch, "transformers": transformers, "pyfunc": pyfunc}
    return modules[flavor].load_model(model_uri, *args, **kwargs)


def _mlflow_patch(flavor: str, real: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real)
    def load_model(model_uri: Any, *args: Any, **kwargs: Any) -> Any:
        from safeload._integrations.guard import is_inside

        if is_inside():  # safeload.mlflow.pyfunc running a model the policy allows to run its code
            return real(model_uri, *args, **kwargs)
        return _mlflow_route(flavor, model_uri, *args, **kwargs)

    return load_model


def _patch_mlflow_module(module: Any) -> None:
    """Replace ``load_model`` of an mlflow flavor module (imported now, or before the patch)."""
    flavor = module.__name__.rpartition(".")[2]
    real = module.__dict__.get("load_model")
    if flavor not in _MLFLOW_FLAVORS or not callable(real):
        return
    with _lock:
        if _depth == 0 and not _installing:
            return
        _saved.append((module, "load_model", real))
        module.load_model = _mlflow_patch(flavor, real)


class _MlflowLoader:
    """The real loader of an mlflow flavor module, which patches the module once it has run."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def create_module(self, spec: Any) -> Any:
        return self._real.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._real.exec_module(module)
        _patch_mlflow_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _MlflowFinder:
    """A ``sys.meta_path`` finder for mlflow's flavor modules imported while patched: the patch never
    imports mlflow itself (it costs seconds), yet an import after ``patch()`` gets the patched names."""

    def __init__(self) -> None:
        self._local = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        import importlib.util

        if fullname not in {f"mlflow.{f}" for f in _MLFLOW_FLAVORS} or getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._local.busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _MlflowLoader(spec.loader)  # type: ignore[assignment]
        return spec


def _install_mlflow() -> Callable[[], None]:
    """Patch the mlflow flavor modules imported already, and the ones imported from now on; returns
    the undo of the import hook (the patched attributes are in ``_saved``)."""
    import sys

    if not _installed("mlflow"):
        return lambda: None
    for flavor in _MLFLOW_FLAVORS:
        module = sys.modules.get(f"mlflow.{flavor}")
        if module is not None:
            _patch_mlflow_module(module)
    finder = _MlflowFinder()
    sys.meta_path.insert(0, finder)

    def undo() -> None:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)

    return undo


# huggingface_hub's download entry points, by the module that defines them and their public name.
_HUB_FUNCTIONS = (
    ("huggingface_hub.file_download", "hf_hub_download"),
    ("huggingface_hub._snapshot_download", "snapshot_download"),
    ("huggingface_hub.file_download", "try_to_load_from_cache"),
)


def _hub_snapshot_download(repo_id: str, *args: Any, **kwargs: Any) -> str:
    """``huggingface_hub.snapshot_download`` through the policy (:func:`safeload.hub.snapshot_download`)."""
    from safeload.hub import snapshot_download

    if args:
        raise TypeError("snapshot_download takes the repo id as its only positional argument")
    return snapshot_download(repo_id, **kwargs)


def _hub_file_download(repo_id: str, filename: str, *args: Any, **kwargs: Any) -> str:
    """``huggingface_hub.hf_hub_download`` through the policy (:func:`safeload.hub.hf_hub_download`)."""
    from safeload.hub import hf_hub_download

    if args:
        raise TypeError("hf_hub_download takes the repo id and file name as its only positional arguments")
    return hf_hub_download(repo_id, filename, **kwargs)


def _hub_cached(repo_id: str, filename: str, *args: Any, **kwargs: Any) -> None:
    """``try_to_load_from_cache``: always "not cached". huggingface_hub's own cache holds files nothing
    has checked; the caller goes on to the patched download, which serves the verified store's copy of a
    pinned file and refuses anything else."""
    del repo_id, filename, args, kwargs


def _method(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def method(self: object, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return method


def _hub_targets() -> list[tuple[object, str, object]]:
    """The hub download functions where huggingface_hub defines and exports them, ``HfApi``'s methods,
    and every copy another module bound by name (``from huggingface_hub import hf_hub_download`` in
    transformers, sentence-transformers, peft, diffusers, timm...) before the patch."""
    import importlib
    import sys

    import huggingface_hub

    replacements = {
        "hf_hub_download": _hub_file_download,
        "snapshot_download": _hub_snapshot_download,
        "try_to_load_from_cache": _hub_cached,
    }
    originals: dict[int, object] = {}
    out: list[tuple[object, str, object]] = []
    for module_name, name in _HUB_FUNCTIONS:
        module = importlib.import_module(module_name)
        original = getattr(module, name)
        originals[id(original)] = replacements[name]
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name in replacements:
            value = namespace.get(name)
            if value is not None and id(value) in originals:
                out.append((module, name, originals[id(value)]))
    for name in replacements:
        if name not in huggingface_hub.__dict__:  # exported lazily: bound now, patched
            out.append((huggingface_hub, name, replacements[name]))
    for name in ("hf_hub_download", "snapshot_download"):
        out.append((huggingface_hub.HfApi, name, _method(replacements[name])))
    return out


def _install() -> None:
    from safeload._integrations import hub_guard as _hub_guard

    # The libraries first: importing them binds huggingface_hub's functions that _hub_targets finds.
    targets = [*_targets(), *_library_targets(), *_hub_targets()]
    guard_targets, undo = _hub_guard.install()
    _undo.append(undo)
    for owner, name, replacement in [*targets, *guard_targets]:
        if isinstance(owner, type):
            original = owner.__dict__[name]
        else:
            original = getattr(owner, name, _MISSING)
        _saved.append((owner, name, original))
        setattr(owner, name, replacement)
    global _installing
    _installing = True
    try:
        _undo.append(_install_mlflow())
    finally:
        _installing = False


def _restore() -> None:
    import sys

    while _undo:
        _undo.pop()()
    names = {name for _, name, _ in _saved}
    patched = {id(new): old for owner, name, old in _saved for new in [getattr(owner, name, None)]}
    while _saved:
        owner, name, original = _saved.pop()
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
    # A module imported while patched bound the patched function by name: give it the original too.
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or module is sys.modules[__name__]:
            continue
        for name in names:
            original = patched.get(id(namespace.get(name)))
            if original is not None and original is not _MISSING:
                namespace[name] = original


_MISSING = object()


class Patch:
    """The handle ``patch()`` returns; as a context manager it undoes its own ``patch()`` on exit."""

    def __enter__(self) -> Patch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _depth
        with _lock:
            if _depth == 0:
                return  # unpatch() already ran
            _depth -= 1
            if _depth == 0:
                _restore()


def patch() -> Patch:
    """Route ``torch.load``, the ``from_pretrained`` of transformers, diffusers, peft and
    sentence-transformers, ``transformers.pipeline``, huggingface_hub's downloads and mlflow's
    ``<flavor>.load_model`` through safeload, and refuse huggingface_hub's requests to origins the policy
    does not name.

    Call it alone to patch until :func:`unpatch`, or use it as ``with safeload.patch(): ...`` to restore
    the original objects (the very same objects) when the block ends. Nested uses are counted.

    Raises:
        Nothing itself; the patched functions raise what ``safeload.load``, ``safeload.transformers``
        and ``safeload.mlflow`` raise.
    """
    global _depth
    with _lock:
        if _depth == 0:
            _install()
        _depth += 1
    return Patch()


def unpatch() -> None:
    """Put back every original ``patch()`` replaced, however many times it was applied."""
    global _depth
    with _lock:
        _depth = 0
        _restore()


def is_patched() -> bool:
    """Whether ``patch()`` is in effect."""
    return _depth > 0
