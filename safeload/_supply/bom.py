"""CycloneDX 1.6 ML-BOM of the models a policy deploys.

One ``machine-learning-model`` component per model (purl ``pkg:huggingface/org/name@commit`` for Hub
models), with every verified file as a nested ``file`` component carrying its sha256, the signer and the
verification result as ``safeload:*`` properties, and a ``modelCard`` built from the model's
``config.json`` and its policy entry. The libraries that load the models (safeload, torch, transformers,
safetensors) are ``library`` components with their installed versions, and the dependency graph says
which loads what. An MLflow model's properties name the registered model, version, run, LoggedModel,
``source``, flavor and pinned alias (``safeload:mlflow:*``).

``cyclonedx-python-lib`` builds everything except the ``modelCard``, which it does not model yet: that is
added to the serialised JSON, and the whole document is then validated against the CycloneDX 1.6 JSON
schema shipped with the library. A document that does not validate raises :class:`BomError` and is never
written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safeload._files import create_beside
from safeload._trust.cyclonedx import schema_error
from safeload.errors import BomError, IntegrityError

if TYPE_CHECKING:
    from safeload._trust.fetched import FetchedModel, UpstreamBom
    from safeload.policy import ModelEntry, Policy

__all__ = [
    "DEFAULT_LIBRARIES",
    "BomDataset",
    "BomModel",
    "bom_model",
    "build_bom",
    "render_bom",
    "write_bom",
]

#: Distributions that load a model, in dependency order: each may depend on the ones before it.
DEFAULT_LIBRARIES: tuple[str, ...] = ("torch", "safetensors", "transformers", "safeload")

# Which library needs which: what ``pip show`` would report for these four, restricted to this set.
_LIBRARY_DEPENDS: Mapping[str, tuple[str, ...]] = {
    "torch": (),
    "safetensors": (),
    "transformers": ("safetensors", "torch"),
    "safeload": ("safetensors", "torch", "transformers"),
}

# A config.json is small; a multi-megabyte one is not a config and is not worth parsing for a card.
_MAX_CONFIG_BYTES = 4 << 20
_SHA256 = re.compile(r"^sha256:([0-9a-f]{64})$")

# transformers' architecture class suffixes and the pipeline task names they serve.
_TASK_BY_SUFFIX: tuple[tuple[str, str], ...] = (
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("ForCTC", "automatic-speech-recognition"),
    ("Model", "feature-extraction"),
)


@dataclass(frozen=True)
class BomDataset:
    """A ``[datasets]`` entry a model names: its pins, and whether the store holds it verified
    (``verification`` ``"sha256"``) or only the policy pins it (``"pinned"``)."""

    name: str
    repo: str
    revision: str | None  # None: a directory registry (the files are pinned by hash, not by a revision)
    registry: str
    registry_kind: str
    files: Mapping[str, str]
    verification: str

    @property
    def ref(self) -> str:
        return _ref("dataset", self.name, self.revision)


@dataclass(frozen=True)
class BomModel:
    """What the BOM records about one verified model.

    ``files`` maps each file's path relative to the model folder to ``"sha256:<hex>"``; ``folder`` is the
    verified folder in the store (its ``config.json`` feeds the model card), or ``None`` when the files
    are not present locally. ``verification`` says what was checked, e.g. ``"sha256"`` or
    ``"sha256+signature"``.
    """

    name: str
    repo: str
    revision: str | None  # None: a directory registry (the files are pinned by hash, not by a revision)
    registry: str
    registry_kind: str
    files: Mapping[str, str]
    verification: str
    folder: Path | None = None
    signer: str | None = None
    signer_identity: str | None = None
    task: str | None = None
    datasets: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    upstream_bom: UpstreamBom | None = None
    # Where an oci model lives (HOST[:PORT]/NAMESPACE/REPO): the purl's repository_url.
    repository_url: str | None = None
    # The [datasets] entries behind ``datasets`` (a name without one is listed by name only).
    dataset_entries: tuple[BomDataset, ...] = ()
    base_model: str | None = None  # the name of the model (in the same BOM) this one was tuned from
    # Only from a verified evaluation attestation: (metric, value, confidence interval, dataset).
    metrics: tuple[tuple[str, float, tuple[float, float] | None, str | None], ...] = ()
    evaluation_signer: str | None = None
    # The pin-set digest of the [datasets] entry the evaluation was measured on, when it names one.
    evaluation_dataset_digest: str | None = None


def bom_model(fetched: FetchedModel, policy: Policy) -> BomModel:
    """What the BOM records of ``fetched`` (a model just verified through ``policy``).

    Raises:
        IntegrityError: the model's stored upstream BOM is gone or no longer hashes to its digest.
    """
    entry = fetched.entry
    spec = policy.registries[entry.registry]
    return BomModel(
        name=fetched.name,
        repo=entry.repo,
        revision=entry.revision,
        registry=entry.registry,
        registry_kind=spec.kind,
        files=dict(fetched.files),
        verification="sha256+signature" if entry.signer is not None else "sha256",
        folder=Path(fetched.folder),
        signer=entry.signer,
        signer_identity=fetched.signature.identity if fetched.signature is not None else None,
        task=entry.task,
        datasets=entry.datasets,
        properties=_mlflow_properties(entry),
        upstream_bom=_checked_upstream(fetched.name, fetched.upstream_bom),
        repository_url=_repository_url(spec, entry.repo),
        dataset_entries=tuple(_bom_dataset(policy, name) for name in entry.datasets),
        base_model=entry.base_model,
        metrics=_attested_metrics(fetched),
        evaluation_signer=fetched.evaluation.identity if fetched.evaluation else None,
        evaluation_dataset_digest=fetched.evaluation.dataset_digest if fetched.evaluation else None,
    )


_LOGGED_MODEL = re.compile(r"^models:/(m-[0-9a-f]{8,64})/?$")


def _mlflow_properties(entry: ModelEntry) -> dict[str, str]:
    """An MLflow entry's identity as the registry knows it: the registered model and version, the run and
    (MLflow 3) the LoggedModel behind it, its ``source``, flavor and the alias it was pinned from."""
    if entry.source is None:
        return {}
    props = {
        "safeload:mlflow:registered_model": entry.repo,
        "safeload:mlflow:version": entry.revision or "",
        "safeload:mlflow:source": entry.source,
    }
    if entry.run_id is not None:
        props["safeload:mlflow:run_id"] = entry.run_id
    logged = _LOGGED_MODEL.match(entry.source)
    if logged is not None:
        props["safeload:mlflow:logged_model_id"] = logged.group(1)
    if entry.flavor is not None:
        props["safeload:mlflow:flavor"] = entry.flavor
    if entry.alias is not None:
        props["safeload:mlflow:alias"] = entry.alias
    return props


def _attested_metrics(
    fetched: FetchedModel,
) -> tuple[tuple[str, float, tuple[float, float] | None, str | None], ...]:
    evaluation = fetched.evaluation
    if evaluation is None:
        return ()
    return tuple((m.name, m.value, m.confidence_interval, evaluation.dataset) for m in evaluation.metrics)


def _bom_dataset(policy: Policy, name: str) -> BomDataset:
    from safeload._trust.store import Store

    entry = policy.datasets[name]  # parse_policy guarantees every model's datasets are entries
    stored = Store(policy.store).read_model(entry.registry, entry.store_repo, entry.store_revision())
    verified = stored is not None and stored.digests == dict(entry.files)
    return BomDataset(
        name=name,
        repo=entry.repo,
        revision=entry.revision,
        registry=entry.registry,
        registry_kind=policy.registries[entry.registry].kind,
        files=dict(entry.files),
        verification="sha256" if verified else "pinned",
    )


def _repository_url(spec: object, repo: str) -> str | None:
    from urllib.parse import urlsplit

    from safeload.policy import OciRegistrySpec

    if not isinstance(spec, OciRegistrySpec):
        return None
    path = f"{spec.namespace}/{repo}" if spec.namespace else repo
    return f"{urlsplit(spec.endpoint).netloc}/{path}"


def _checked_upstream(name: str, upstream: UpstreamBom | None) -> UpstreamBom | None:
    """The stored upstream BOM, re-hashed: it is small, and the BOM names it by this digest."""
    if upstream is None:
        return None
    try:
        data = upstream.path.read_bytes()
    except OSError as exc:
        raise IntegrityError(
            f"model {name!r}: its upstream BOM {upstream.digest} is gone from the store ({exc.strerror}); "
            f"run `safeload verify` and `safeload prefetch {name}`"
        ) from exc
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != upstream.digest:
        raise IntegrityError(
            f"model {name!r}: the stored upstream BOM no longer hashes to {upstream.digest}",
            path=str(upstream.path), expected=upstream.digest, actual=actual,
        )
    return upstream


_NO_REVISION = "none (directory registry: every file pinned by sha256)"


def _ref(kind: str, name: str, revision: str | None) -> str:
    return f"{kind}:{name}@{revision.lower()}" if revision else f"{kind}:{name}"


def _version(revision: str | None) -> str | None:
    return revision.lower() if revision else None


def _purl(model: BomModel) -> Any:
    from packageurl import PackageURL

    org, _, name = model.repo.rpartition("/")
    if model.registry_kind == "oci":
        # purl's oci type: the last path segment, the manifest digest, and where the repository is.
        qualifiers = {"repository_url": model.repository_url} if model.repository_url else None
        return PackageURL(type="oci", name=name.lower(), version=model.revision, qualifiers=qualifiers)
    kind = "huggingface" if model.registry_kind == "huggingface" else "generic"
    return PackageURL(type=kind, namespace=org or None, name=name, version=_version(model.revision))


def _hex_digest(owner: str, path: str, digest: str) -> str:
    """The hex of a ``sha256:<hex>`` pin; ``owner`` ("model 'x'", "dataset 'y'") names it in the error."""
    match = _SHA256.match(digest)
    if match is None:
        raise BomError(
            f"{owner}: file {path!r} has digest {digest!r}; expected 'sha256:' and 64 lowercase hex digits "
            "(re-pin it with `safeload pin`)"
        )
    return match.group(1)


def _file_components(owner: str, ref: str, files: Mapping[str, str]) -> list[Any]:
    """One nested ``file`` component per pinned file, with its SHA-256."""
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.component import Component, ComponentType

    return [
        Component(
            type=ComponentType.FILE,
            name=path,
            bom_ref=f"{ref}/{path}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=_hex_digest(owner, path, digest))],
        )
        for path, digest in sorted(files.items())
    ]


def _read_config(model: BomModel) -> Mapping[str, Any]:
    # An MLflow transformers model keeps its config under model/ (MLmodel's model_binary, always "model").
    mlflow_transformers = model.properties.get("safeload:mlflow:flavor") == "transformers"
    rel = "model/config.json" if mlflow_transformers else "config.json"
    if model.folder is None or rel not in model.files:
        return {}
    path = model.folder / rel
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise BomError(
            f"model {model.name!r}: cannot read {path}: {exc.strerror}; run `safeload prefetch {model.name}`"
        ) from exc
    if len(raw) > _MAX_CONFIG_BYTES:
        return {}
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def _model_card(model: BomModel, ref: str) -> dict[str, Any]:
    config = _read_config(model)
    params: dict[str, Any] = {}
    architectures = config.get("architectures")
    architecture = (
        architectures[0]
        if isinstance(architectures, list) and architectures and isinstance(architectures[0], str)
        else None
    )
    task = model.task
    if task is None and architecture is not None:
        task = next((t for suffix, t in _TASK_BY_SUFFIX if architecture.endswith(suffix)), None)
    if task is not None:
        params["task"] = task
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        params["architectureFamily"] = model_type
    if architecture is not None:
        params["modelArchitecture"] = architecture
    if model.datasets:
        refs = {d.name: d.ref for d in model.dataset_entries}
        params["datasets"] = [
            {"ref": refs[name]} if name in refs else {"type": "dataset", "name": name}
            for name in model.datasets
        ]
    card: dict[str, Any] = {"bom-ref": f"{ref}#model-card"}
    evaluated_on: set[str] = set()
    if model.metrics:
        # Each metric names the dataset it was measured on: the data component's bom-ref when it is a
        # [datasets] entry of the model (the verification core admits no other when the entry names
        # datasets), else the name the attestation gives.
        data_refs = {d.name: d.ref for d in model.dataset_entries}
        performance = []
        for name, value, ci, dataset in model.metrics:
            metric: dict[str, Any] = {"type": name, "value": f"{value:g}"}
            if dataset:
                metric["slice"] = data_refs.get(dataset, dataset)
                evaluated_on.add(dataset)
            if ci is not None:
                metric["confidenceInterval"] = {"lowerBound": f"{ci[0]:g}", "upperBound": f"{ci[1]:g}"}
            performance.append(metric)
        card["quantitativeAnalysis"] = {"performanceMetrics": performance}
    if params:
        card["modelParameters"] = params
    card_properties = [
        {"name": f"safeload:config:{key}", "value": str(config[key])}
        for key in ("torch_dtype", "dtype", "hidden_size", "num_hidden_layers", "vocab_size")
        if isinstance(config.get(key), (str, int)) and not isinstance(config.get(key), bool)
    ]
    for dataset in sorted(evaluated_on):
        card_properties.append({"name": "safeload:evaluation:dataset", "value": dataset})
    if evaluated_on and model.evaluation_dataset_digest:
        card_properties.append(
            {"name": "safeload:evaluation:dataset_digest", "value": model.evaluation_dataset_digest}
        )
    if card_properties:
        card["properties"] = card_properties
    return card


def _library_version(dist: str) -> str | None:
    from importlib import metadata  # 12 ms to import; resolve imports this module on every load

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def build_bom(models: Sequence[BomModel], *, libraries: Iterable[str] = DEFAULT_LIBRARIES) -> dict[str, Any]:
    """Build the ML-BOM for ``models`` and return the validated CycloneDX 1.6 JSON document.

    ``libraries`` names the installed distributions to record (those not installed are left out).

    Raises:
        BomError: a file digest is not ``sha256:<hex>``, a model's ``config.json`` cannot be read, two
            models share a name, or the finished document does not validate against the CycloneDX 1.6
            JSON schema.
    """
    from cyclonedx.model import (
        ExternalReference,
        ExternalReferenceType,
        HashAlgorithm,
        HashType,
        Property,
        XsUri,
    )
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            raise BomError(f"model {model.name!r} is listed twice; name each model once")
        seen.add(model.name)

    bom = Bom()
    tool_version = _library_version("safeload")
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="safeload", version=tool_version)
    )
    libs: dict[str, Any] = {}
    for dist in libraries:
        version = _library_version(dist)
        if version is None:
            continue
        libs[dist] = Component(
            type=ComponentType.LIBRARY,
            name=dist,
            version=version,
            bom_ref=f"pkg:pypi/{dist}@{version}",
            purl=PackageURL(type="pypi", name=dist, version=version),
        )
        bom.components.add(libs[dist])
    for dist, component in libs.items():
        bom.register_dependency(component, [libs[d] for d in _LIBRARY_DEPENDS.get(dist, ()) if d in libs])
    loaders = [libs[d] for d in ("safeload", "transformers", "torch", "safetensors") if d in libs]

    datasets: dict[str, Any] = {}
    for model in models:
        for data in model.dataset_entries:
            if data.ref not in datasets:
                datasets[data.ref] = _data_component(data)
                bom.components.add(datasets[data.ref])
    components: dict[str, Any] = {}
    cards: dict[str, dict[str, Any]] = {}
    for model in models:
        purl = _purl(model)
        ref = _ref("model", model.name, model.revision)
        files = _file_components(f"model {model.name!r}", ref, model.files)
        props = {
            "safeload:name": model.name,
            "safeload:registry": model.registry,
            "safeload:registry:kind": model.registry_kind,
            "safeload:repo": model.repo,
            "safeload:revision": model.revision or _NO_REVISION,
            "safeload:verification": model.verification,
            "safeload:signer": model.signer or "none",
            **({"safeload:signer:identity": model.signer_identity} if model.signer_identity else {}),
            **dict(model.properties),
            **({"safeload:upstream-bom": model.upstream_bom.digest} if model.upstream_bom else {}),
            **(
                {"safeload:evaluation:signer:identity": model.evaluation_signer}
                if model.evaluation_signer
                else {}
            ),
        }
        refs = []
        if model.upstream_bom is not None:
            # The publisher's own BOM, by BOM-Link when it has a serial (CycloneDX's way to name another
            # BOM), with the sha256 of the bytes that were checked against its schema.
            up = model.upstream_bom
            refs.append(
                ExternalReference(
                    type=ExternalReferenceType.BOM,
                    url=XsUri(up.link or f"urn:sha256:{up.digest.removeprefix('sha256:')}"),
                    comment="the BOM its publisher attached to the model (unsigned upstream claims)",
                    hashes=[
                        HashType(
                            alg=HashAlgorithm.SHA_256,
                            content=_hex_digest(f"model {model.name!r}", "BOM", up.digest),
                        )
                    ],
                )
            )
        component = Component(
            type=ComponentType.MACHINE_LEARNING_MODEL,
            name=model.repo,
            version=_version(model.revision),
            bom_ref=ref,
            purl=purl,
            properties=[Property(name=k, value=v) for k, v in props.items()],
            components=files,
            external_references=refs,
        )
        bom.components.add(component)
        components[model.name] = component
        cards[ref] = _model_card(model, ref)
    for model in models:
        # What a model needs: the libraries that load it, the data it was trained on, its base model.
        needs = [*loaders, *(datasets[d.ref] for d in model.dataset_entries)]
        if model.base_model is not None:
            if model.base_model not in components:
                raise BomError(
                    f"model {model.name!r} is tuned from {model.base_model!r}, which is not in the BOM; "
                    "describe the base model too"
                )
            needs.append(components[model.base_model])
        bom.register_dependency(components[model.name], needs)

    try:
        document: dict[str, Any] = json.loads(JsonV1Dot6(bom).output_as_string())
    except Exception as exc:  # the library raises its own exception types for model errors
        raise BomError(f"cyclonedx could not serialise the BOM: {exc}") from exc
    for component in document.get("components", []):
        card = cards.get(component.get("bom-ref"))
        if card is not None:
            component["modelCard"] = card
    _validate(document)
    return document


def _data_component(data: BomDataset) -> Any:
    from cyclonedx.model import Property
    from cyclonedx.model.component import Component, ComponentType

    files = _file_components(f"dataset {data.name!r}", data.ref, data.files)
    props = {
        "safeload:name": data.name,
        "safeload:registry": data.registry,
        "safeload:registry:kind": data.registry_kind,
        "safeload:repo": data.repo,
        "safeload:revision": data.revision or _NO_REVISION,
        "safeload:verification": data.verification,
    }
    return Component(
        type=ComponentType.DATA,
        name=data.repo,
        version=_version(data.revision),
        bom_ref=data.ref,
        properties=[Property(name=k, value=v) for k, v in props.items()],
        components=files,
    )


def _validate(document: Mapping[str, Any]) -> None:
    error = schema_error(json.dumps(document), "1.6")
    if error is not None:
        raise BomError(f"the BOM does not validate against CycloneDX 1.6: {error}; it was not written")


def render_bom(models: Sequence[BomModel], *, libraries: Iterable[str] = DEFAULT_LIBRARIES) -> str:
    """Return the validated ML-BOM for ``models`` as indented JSON text.

    Raises:
        BomError: as :func:`build_bom`.
    """
    return json.dumps(build_bom(models, libraries=libraries), indent=2) + "\n"


def write_bom(document: Mapping[str, Any], path: Path) -> None:
    """Validate ``document`` and write it to ``path`` atomically (a reader never sees a partial file),
    with the permissions the caller's umask gives a new file.

    Raises:
        BomError: the document does not validate (nothing is written), or ``path`` cannot be written.
    """
    _validate(document)
    text = json.dumps(document, indent=2) + "\n"
    try:
        fd, tmp = create_beside(path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise BomError(f"cannot write the BOM to {path}: {exc.strerror or exc}") from exc
