"""``kind = "oci"`` against a real registry: Debian's docker-registry (distribution 2.8) on 127.0.0.1.

Artifacts are pushed by the real ``oras`` client and by plain distribution API calls that build the
ModelPack, KitOps and signature layouts by hand: none of them come from safeload's own code. Attacks
tamper with the registry's own storage (distribution serves a blob's file without re-checking it), so
the registry itself lies: a blob whose bytes differ from its descriptor, a manifest whose bytes differ
from the pin, a blob longer than its descriptor, and tar layers with ``..``, absolute, symlink and
hardlink entries. Each must fail with a typed error and leave nothing in the store.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeload._trust.pinning import pin_model
from safeload._trust.resolve import fetch_model
from safeload.errors import IntegrityError, PolicyError, SignatureError, UntrustedSourceError
from safeload.policy import load_policy, parse_policy
from tests.helpers.canary import Payload
from tests.helpers.ociregistry import OciRegistry, oras_push
from tests.helpers.signing import generate_key, sign_with_key, write_tiny_model
from tests.helpers.trust import write_policy

EMPTY = "application/vnd.oci.empty.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    server = OciRegistry.start(tmp_path_factory.mktemp("oci"))
    try:
        yield server
    finally:
        server.stop()


def _blob_file(registry: OciRegistry, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    found = list(registry.root.rglob(f"blobs/sha256/{hexd[:2]}/{hexd}/data"))
    assert len(found) == 1, found
    return found[0]


def _push(
    registry: OciRegistry,
    repo: str,
    files: dict[str, bytes],
    *,
    tag: str = "v1",
    config_type: str = MODELPACK_CONFIG,
    artifact_type: str | None = "application/vnd.cncf.model.manifest.v1+json",
    layer_type: str = "application/vnd.cncf.model.weight.v1.raw",
    tars: dict[str, bytes] | None = None,
) -> str:
    """A ModelPack-style manifest: one raw layer per file (and given tar layers), pushed by hand."""
    config = json.dumps({"descriptor": {"name": repo}}).encode()
    layers = []
    for name, data in files.items():
        layers.append(
            {
                "mediaType": layer_type,
                "digest": registry.push_blob(repo, data),
                "size": len(data),
                "annotations": {"org.cncf.model.filepath": name},
            }
        )
    for name, data in (tars or {}).items():
        layers.append(
            {
                "mediaType": "application/vnd.cncf.model.weight.v1.tar",
                "size": len(data),
                "digest": registry.push_blob(repo, data),
                "annotations": {"org.cncf.model.filepath": name},
            }
        )
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config_type, "digest": registry.push_blob(repo, config), "size": len(config)},
        "layers": layers,
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    return registry.push_manifest(repo, manifest, tag)


def _tar(entries: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """A tar of (name, link target or None, content) entries; type from the target: b"sym:", b"hard:"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, link, data in entries:
            info = tarfile.TarInfo(name)
            if link is not None and link.startswith(b"sym:"):
                info.type, info.linkname = tarfile.SYMTYPE, link[4:].decode()
                tar.addfile(info)
            elif link is not None and link.startswith(b"hard:"):
                info.type, info.linkname = tarfile.LNKTYPE, link[5:].decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _policy(
    tmp_path: Path, registry: OciRegistry, repo: str, digest: str, files: dict[str, str], **model: object
) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"oci": {"kind": "oci", "endpoint": registry.endpoint}},
        models={"m": {"registry": "oci", "repo": repo, "revision": digest, "files": files, **model}},
    )


def _nothing_stored(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for part in ("blobs", "models", "staging"):
        left = [p for p in (store / part).rglob("*") if p.is_file()]
        assert left == [], f"the store's {part} holds {left}"


def test_a_tag_is_refused_at_policy_load() -> None:
    text = (
        "version = 1\n[registries.oci]\nkind = 'oci'\nendpoint = 'http://127.0.0.1:5000'\n"
        "[models.m]\nregistry = 'oci'\nrepo = 'acme/m'\nrevision = 'latest'\nfiles = { a = 'sha256:"
        + "0" * 64
        + "' }\n"
    )
    with pytest.raises(PolicyError, match=r"models\.m\.revision: must be a manifest digest .*got 'latest'"):
        parse_policy(text)


def test_an_oras_artifact_pins_by_tag_and_loads_by_digest(tmp_path: Path, registry: OciRegistry) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_bytes(b'{"model_type": "bert"}')
    (src / "weights.bin").write_bytes(b"\x00\x01" * 5000)
    digest = oras_push(
        registry,
        f"{registry.host}/oras/plain:v1",
        {
            "config.json": src / "config.json",
            "weights.bin": src / "weights.bin",
        },
    )
    policy_path = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"oci": {"kind": "oci", "endpoint": registry.endpoint}},
    )
    with pytest.raises(PolicyError, match="is a tag, and tags move"):
        pin_model(f"oci://{registry.host}/oras/plain:v1", policy_path=policy_path, name="m")
    name, entry = pin_model(
        f"oci://{registry.host}/oras/plain:v1", policy_path=policy_path, name="m", resolve=True
    )
    assert entry.revision == digest
    assert dict(entry.files) == {
        "config.json": _sha(b'{"model_type": "bert"}'),
        "weights.bin": _sha(b"\x00\x01" * 5000),
    }
    fetched = fetch_model(name, policy=load_policy(policy_path), progress=False)
    assert (fetched.folder / "weights.bin").read_bytes() == b"\x00\x01" * 5000


def test_a_modelpack_artifact_with_a_folder_layer_loads_per_file(
    tmp_path: Path, registry: OciRegistry
) -> None:
    files = {"config.json": b'{"a": 1}'}
    tokenizer = _tar([("tokenizer/vocab.txt", None, b"[PAD]\nhello\n"), ("tokenizer/merges.txt", None, b"")])
    digest = _push(registry, "mp/model", files, tars={"tokenizer": tokenizer})
    pins = {"config.json": _sha(b'{"a": 1}'), "tokenizer/vocab.txt": _sha(b"[PAD]\nhello\n")}
    fetched = fetch_model(
        "m", policy=load_policy(_policy(tmp_path, registry, "mp/model", digest, pins)), progress=False
    )
    assert (fetched.folder / "tokenizer" / "vocab.txt").read_bytes() == b"[PAD]\nhello\n"
    assert sorted(p.name for p in fetched.folder.rglob("*") if p.is_file()) == ["config.json", "vocab.txt"]
    warm = fetch_model("m", policy=load_policy(tmp_path / "trust.toml"), progress=False)
    assert warm.folder == fetched.folder


def test_a_kitops_modelkit_is_read_by_its_media_types(tmp_path: Path, registry: OciRegistry) -> None:
    model = _tar([("model/weights.bin", None, b"w" * 300)])
    gz = io.BytesIO()
    import gzip

    with gzip.GzipFile(fileobj=gz, mode="wb") as fh:
        fh.write(model)
    data = gz.getvalue()
    config = b'{"manifestVersion": "1.0"}'
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.kitops.modelkit.config.v1+json",
            "digest": registry.push_blob("kit/model", config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.kitops.modelkit.model.v1.tar+gzip",
                "digest": registry.push_blob("kit/model", data),
                "size": len(data),
            }
        ],
    }
    digest = registry.push_manifest("kit/model", manifest, "v1")
    pins = {"model/weights.bin": _sha(b"w" * 300)}
    fetched = fetch_model(
        "m", policy=load_policy(_policy(tmp_path, registry, "kit/model", digest, pins)), progress=False
    )
    assert (fetched.folder / "model" / "weights.bin").read_bytes() == b"w" * 300


def test_a_moved_tag_changes_nothing_that_is_pinned(tmp_path: Path, registry: OciRegistry) -> None:
    first = _push(registry, "moving/model", {"config.json": b"first"}, tag="stable")
    pins = {"config.json": _sha(b"first")}
    policy = load_policy(_policy(tmp_path, registry, "moving/model", first, pins))
    second = _push(registry, "moving/model", {"config.json": b"second, evil"}, tag="stable")
    assert second != first and registry.manifest("moving/model", "stable")[1] == second
    fetched = fetch_model("m", policy=policy, progress=False)
    assert (fetched.folder / "config.json").read_bytes() == b"first"


def test_a_blob_whose_bytes_differ_from_its_descriptor_is_refused(
    tmp_path: Path, registry: OciRegistry
) -> None:
    good = b"the reviewed weights" * 10
    digest = _push(registry, "lie/blob", {"model.safetensors": good})
    _blob_file(registry, _sha(good)).write_bytes(b"X" * len(good))  # the registry's storage is tampered
    pins = {"model.safetensors": _sha(good)}
    with pytest.raises(IntegrityError, match=f"expected {_sha(good)}"):
        fetch_model(
            "m", policy=load_policy(_policy(tmp_path, registry, "lie/blob", digest, pins)), progress=False
        )
    _nothing_stored(tmp_path)


def test_a_blob_longer_than_its_descriptor_is_stopped(tmp_path: Path, registry: OciRegistry) -> None:
    good = b"short"
    digest = _push(registry, "lie/long", {"model.safetensors": good})
    _blob_file(registry, _sha(good)).write_bytes(good + b"Y" * (4 << 20))
    pins = {"model.safetensors": _sha(good)}
    with pytest.raises(IntegrityError, match=r"announces 4194309 bytes|more than 5 bytes"):
        fetch_model(
            "m", policy=load_policy(_policy(tmp_path, registry, "lie/long", digest, pins)), progress=False
        )
    _nothing_stored(tmp_path)


def test_a_manifest_whose_bytes_differ_from_the_pin_is_refused(tmp_path: Path, registry: OciRegistry) -> None:
    digest = _push(registry, "lie/manifest", {"config.json": b"{}"})
    path = _blob_file(registry, digest)
    tampered = path.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion": 2')
    tampered = tampered if tampered != path.read_bytes() else path.read_bytes() + b" "
    path.write_bytes(tampered)
    with pytest.raises(
        IntegrityError, match=r"the manifest served hashes to .* not the pinned digest|Docker-Content"
    ):
        fetch_model(
            "m",
            policy=load_policy(
                _policy(tmp_path, registry, "lie/manifest", digest, {"config.json": _sha(b"{}")})
            ),
            progress=False,
        )
    _nothing_stored(tmp_path)


def test_a_pin_that_contradicts_the_manifest_downloads_nothing(tmp_path: Path, registry: OciRegistry) -> None:
    digest = _push(registry, "lie/pin", {"config.json": b"{}"})
    with pytest.raises(IntegrityError, match=r"the manifest names config\.json = .* but the policy pins"):
        fetch_model(
            "m",
            policy=load_policy(
                _policy(tmp_path, registry, "lie/pin", digest, {"config.json": _sha(b"other")})
            ),
            progress=False,
        )
    _nothing_stored(tmp_path)


@pytest.mark.parametrize(
    ("entries", "refusal"),
    [
        ([("../../escape.txt", None, b"pwned")], "not a relative path"),
        ([("/tmp/safeload-oci-escape.txt", None, b"pwned")], "not a relative path"),
        ([("tokenizer/link", b"sym:/etc/passwd", b"")], "a link"),
        ([("tokenizer/a", None, b"a"), ("tokenizer/hard", b"hard:tokenizer/a", b"")], "a link"),
    ],
    ids=["dot-dot", "absolute", "symlink", "hardlink"],
)
def test_an_unsafe_tar_layer_is_refused_whole(
    tmp_path: Path, registry: OciRegistry, entries: list[tuple[str, bytes | None, bytes]], refusal: str
) -> None:
    layer = _tar([("tokenizer/vocab.txt", None, b"v"), *entries])
    digest = _push(
        registry,
        "lie/tar",
        {"config.json": b"{}"},
        tars={"tokenizer": layer},
        tag="t" + hashlib.sha256(layer).hexdigest()[:12],
    )
    pins = {"config.json": _sha(b"{}"), "tokenizer/vocab.txt": _sha(b"v")}
    with pytest.raises(IntegrityError, match=refusal):
        fetch_model(
            "m", policy=load_policy(_policy(tmp_path, registry, "lie/tar", digest, pins)), progress=False
        )
    _nothing_stored(tmp_path)
    assert not Path("/tmp/safeload-oci-escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def _signed_artifact(tmp_path: Path, registry: OciRegistry, repo: str) -> tuple[str, Path, Path]:
    model = write_tiny_model(tmp_path / "model")
    keys = tmp_path / "keys"
    release, other = generate_key(keys, "release"), generate_key(keys, "other")
    sign_with_key(model, release.private)
    files = {
        p.relative_to(model).as_posix(): p.read_bytes()
        for p in model.rglob("*")
        if p.is_file() and p.name != "model.sig"
    }
    flat = {k: v for k, v in files.items() if "/" not in k}
    tokenizer = _tar([(k, None, v) for k, v in files.items() if "/" in k])
    digest = _push(registry, repo, flat, tars={"tokenizer": tokenizer})
    raw, _ = registry.manifest(repo, digest)
    registry.attach(
        repo, digest, len(raw), SIGSTORE_BUNDLE, (model / "model.sig").read_bytes(), SIGSTORE_BUNDLE
    )
    return digest, release.public, other.public


def test_an_attached_signature_verifies_through_the_policy_signer(
    tmp_path: Path, registry: OciRegistry
) -> None:
    digest, release, _ = _signed_artifact(tmp_path, registry, "signed/model")
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"oci": {"kind": "oci", "endpoint": registry.endpoint}},
        signers={"release": {"kind": "key", "public_key": str(release)}},
        models={"m": {"registry": "oci", "repo": "signed/model", "revision": digest, "signer": "release"}},
    )
    fetched = fetch_model("m", policy=load_policy(policy), progress=False)
    assert fetched.signature is not None and fetched.signature.signer == "release"
    assert (fetched.folder / "tokenizer" / "vocab.txt").read_text().startswith("[PAD]")


def test_an_attached_signature_from_another_signer_is_refused(tmp_path: Path, registry: OciRegistry) -> None:
    digest, _, other = _signed_artifact(tmp_path, registry, "signed/other")
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"oci": {"kind": "oci", "endpoint": registry.endpoint}},
        signers={"release": {"kind": "key", "public_key": str(other)}},
        models={"m": {"registry": "oci", "repo": "signed/other", "revision": digest, "signer": "release"}},
    )
    with pytest.raises(SignatureError):
        fetch_model("m", policy=load_policy(policy), progress=False)
    assert not any((tmp_path / "store" / "models").rglob("*.json"))


def test_an_unsigned_artifact_is_refused_when_the_entry_names_a_signer(
    tmp_path: Path, registry: OciRegistry
) -> None:
    digest = _push(registry, "unsigned/model", {"config.json": b"{}"})
    keys = generate_key(tmp_path / "keys", "release")
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"oci": {"kind": "oci", "endpoint": registry.endpoint}},
        signers={"release": {"kind": "key", "public_key": str(keys.public)}},
        models={
            "m": {
                "registry": "oci",
                "repo": "unsigned/model",
                "revision": digest,
                "signer": "release",
                "files": {"config.json": _sha(b"{}")},
            }
        },
    )
    with pytest.raises(SignatureError, match="no model-signing signature is attached"):
        fetch_model("m", policy=load_policy(policy), progress=False)


def test_an_unknown_manifest_is_an_untrusted_source(tmp_path: Path, registry: OciRegistry) -> None:
    with pytest.raises(UntrustedSourceError, match="not found in the registry"):
        fetch_model(
            "m",
            policy=load_policy(_policy(tmp_path, registry, "nobody/here", _sha(b"x"), {"a": _sha(b"a")})),
            progress=False,
        )


# --- attached BOMs -----------------------------------------------------------------------------------

CYCLONEDX = "application/vnd.cyclonedx+json"


def _attach_bom(registry: OciRegistry, repo: str, digest: str, bom: object) -> None:
    raw, _ = registry.manifest(repo, digest)
    payload = json.dumps(bom).encode()
    registry.attach(repo, digest, len(raw), CYCLONEDX, payload, CYCLONEDX)


def test_an_attached_bom_is_validated_and_kept_as_the_upstream_bom(
    tmp_path: Path, registry: OciRegistry
) -> None:
    digest = _push(registry, "bom/model", {"config.json": b'{"model_type": "bert"}'})
    upstream = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79",
        "version": 2,
        "components": [{"type": "machine-learning-model", "name": "bom/model", "bom-ref": "m"}],
    }
    _attach_bom(registry, "bom/model", digest, upstream)
    policy_path = _policy(
        tmp_path, registry, "bom/model", digest, {"config.json": _sha(b'{"model_type": "bert"}')}
    )
    fetched = fetch_model("m", policy=load_policy(policy_path), progress=False)
    assert fetched.upstream_bom is not None
    assert fetched.upstream_bom.link == "urn:cdx:3e671687-395b-41f5-a30f-a58921a69b79/2"
    assert json.loads(fetched.upstream_bom.path.read_bytes()) == upstream
    from safeload.cli import main

    assert main(["bom", "m", "-o", str(tmp_path / "bom.json"), "--policy", str(policy_path)]) == 0
    model = next(
        c
        for c in json.loads((tmp_path / "bom.json").read_text())["components"]
        if c["type"] == "machine-learning-model"
    )
    (ref,) = model["externalReferences"]
    assert ref["type"] == "bom" and ref["url"] == fetched.upstream_bom.link
    assert ref["hashes"] == [
        {"alg": "SHA-256", "content": fetched.upstream_bom.digest.removeprefix("sha256:")}
    ]
    # gc keeps what a published model references
    from safeload._trust.store import Store

    Store(tmp_path / "store").gc()
    assert fetched.upstream_bom.path.exists()


def test_an_attached_bom_that_fails_the_schema_stores_nothing(tmp_path: Path, registry: OciRegistry) -> None:
    digest = _push(registry, "bom/bad", {"config.json": b"{}"})
    _attach_bom(
        registry,
        "bom/bad",
        digest,
        {"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [{"type": "not-a-type", "name": 7}]},
    )
    with pytest.raises(IntegrityError, match=r"does not validate against CycloneDX 1\.6"):
        fetch_model(
            "m",
            policy=load_policy(_policy(tmp_path, registry, "bom/bad", digest, {"config.json": _sha(b"{}")})),
            progress=False,
        )
    _nothing_stored(tmp_path)


# --- safeload push -----------------------------------------------------------------------------------


def _source_policy(tmp_path: Path, registry: OciRegistry) -> tuple[Path, Path]:
    """A signed tiny model in a directory registry, pinned by signer, and an oci registry to push to."""
    source = tmp_path / "source"
    model = write_tiny_model(source / "acme" / "tiny")
    key = generate_key(tmp_path / "keys", "release")
    sign_with_key(model, key.private)
    files = {
        p.relative_to(model).as_posix(): _sha(p.read_bytes())
        for p in model.rglob("*")
        if p.is_file() and p.name != "model.sig"
    }
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={
            "local": {"kind": "directory", "path": str(source)},
            "oci": {"kind": "oci", "endpoint": registry.endpoint},
        },
        signers={"release": {"kind": "key", "public_key": str(key.public)}},
        models={"acme/tiny": {"registry": "local", "repo": "acme/tiny", "signer": "release", "files": files}},
    )
    return policy, key.public


def test_push_publishes_a_verified_model_that_pulls_back_verified(
    tmp_path: Path, registry: OciRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from safeload.cli import main

    policy_path, public = _source_policy(tmp_path, registry)
    source = fetch_model("acme/tiny", policy=load_policy(policy_path), progress=False)
    shutil.rmtree(tmp_path / "source")  # a push reads the store only
    capsys.readouterr()
    target = f"oci://{registry.host}/pushed/tiny:v1"
    assert main(["push", "acme/tiny", target, "--policy", str(policy_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    digest = out["digest"]
    assert registry.manifest("pushed/tiny", "v1")[1] == digest
    manifest = json.loads(registry.manifest("pushed/tiny", digest)[0])
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert sorted(layer["annotations"]["org.cncf.model.filepath"] for layer in manifest["layers"]) == sorted(
        source.files
    )
    assert out["attached"] == [SIGSTORE_BUNDLE, CYCLONEDX]

    # The printed entry, pasted into another machine's trust.toml, pulls and verifies the same bytes.
    other = tmp_path / "puller"
    other.mkdir()
    (other / "trust.toml").write_text(
        f'version = 1\nstore = "{other / "store"}"\n'
        f'[registries.oci]\nkind = "oci"\nendpoint = "{registry.endpoint}"\n'
        f'[signers.release]\nkind = "key"\npublic_key = "{public}"\n' + out["entry"]
    )
    pulled = fetch_model("acme/tiny", policy=load_policy(other / "trust.toml"), progress=False)
    assert dict(pulled.files) == dict(source.files)
    assert pulled.signature is not None and pulled.signature.signer == "release"
    assert pulled.upstream_bom is not None
    bom = json.loads(pulled.upstream_bom.path.read_bytes())
    assert any(c.get("name") == "acme/tiny" for c in bom["components"])

    # Pushing the same verified model again uploads nothing new and yields the same digest.
    assert main(["push", "acme/tiny", target, "--policy", str(policy_path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["digest"] == digest and again["uploaded_bytes"] < 200_000


def test_push_refuses_a_digest_target_and_an_unknown_host(tmp_path: Path, registry: OciRegistry) -> None:
    from safeload._supply.publish import push_model

    policy_path, _ = _source_policy(tmp_path, registry)
    policy = load_policy(policy_path)
    with pytest.raises(PolicyError, match="push to a tag"):
        push_model("acme/tiny", f"oci://{registry.host}/x/y@{_sha(b'x')}", policy=policy, progress=False)
    with pytest.raises(PolicyError, match="0 oci registries"):
        push_model("acme/tiny", "oci://registry.example:5000/x/y:v1", policy=policy, progress=False)


# --- credentials and redirects -----------------------------------------------------------------------


class _Capture:
    """Two loopback servers: a front that forwards to the registry but redirects every blob GET to the
    second ("blob storage" on another port), which records the headers it is sent and serves the bytes."""

    def __init__(self, registry: OciRegistry) -> None:
        import http.server
        import threading
        import urllib.request

        self.front_headers: list[dict[str, str]] = []
        self.storage_headers: list[dict[str, str]] = []
        capture = self

        def forward(path: str, method: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            req = urllib.request.Request(
                registry.endpoint + path,
                method=method,
                headers={k: v for k, v in headers.items() if k.lower() == "accept"},
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()

        class Front(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self, method: str) -> None:
                capture.front_headers.append(dict(self.headers))
                if "/blobs/" in self.path and method == "GET":
                    self.send_response(307)
                    self.send_header("Location", f"http://127.0.0.1:{capture.storage_port}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    status, headers, body = forward(self.path, method, dict(self.headers))
                except urllib.error.HTTPError as exc:
                    status, headers, body = exc.code, dict(exc.headers), exc.read()
                self.send_response(status)
                for key in ("Content-Type", "Docker-Content-Digest"):
                    if key in headers:
                        self.send_header(key, headers[key])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method == "GET":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_HEAD(self) -> None:
                self._handle("HEAD")

        class Storage(Front):
            def _handle(self, method: str) -> None:
                capture.storage_headers.append(dict(self.headers))
                status, _, body = forward(self.path, "GET", {})
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method == "GET":
                    self.wfile.write(body)

        import urllib.error

        self._servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (Front, Storage)]
        self.front_port = self._servers[0].server_address[1]
        self.storage_port = self._servers[1].server_address[1]
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def capture(registry: OciRegistry) -> Iterator[_Capture]:
    servers = _Capture(registry)
    try:
        yield servers
    finally:
        servers.close()


def _capture_policy(tmp_path: Path, capture: _Capture, digest: str, redirect_hosts: list[str]) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={
            "oci": {
                "kind": "oci",
                "endpoint": f"http://127.0.0.1:{capture.front_port}",
                "token_env": "SAFELOAD_TEST_OCI_TOKEN",
                "redirect_hosts": redirect_hosts,
            }
        },
        models={
            "m": {
                "registry": "oci",
                "repo": "redirect/model",
                "revision": digest,
                "files": {"model.safetensors": _sha(b"weights" * 100)},
            }
        },
    )


def test_a_redirect_to_blob_storage_on_another_port_gets_no_credentials(
    tmp_path: Path, registry: OciRegistry, capture: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = _push(registry, "redirect/model", {"model.safetensors": b"weights" * 100})
    monkeypatch.setenv("SAFELOAD_TEST_OCI_TOKEN", "s3cret-token")
    policy = _capture_policy(tmp_path, capture, digest, [f"127.0.0.1:{capture.storage_port}"])
    fetched = fetch_model("m", policy=load_policy(policy), progress=False)
    assert (fetched.folder / "model.safetensors").read_bytes() == b"weights" * 100
    assert capture.storage_headers, "the blob was not fetched from the redirect target"
    assert all(h.get("Authorization") == "Bearer s3cret-token" for h in capture.front_headers)
    leaked = [h for h in capture.storage_headers if any("s3cret" in v for v in h.values())]
    assert leaked == [] and all("Authorization" not in h for h in capture.storage_headers)


def test_a_redirect_to_a_port_not_allowed_is_refused_unfollowed(
    tmp_path: Path, registry: OciRegistry, capture: _Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = _push(registry, "redirect/model", {"model.safetensors": b"weights" * 100})
    monkeypatch.setenv("SAFELOAD_TEST_OCI_TOKEN", "s3cret-token")
    policy = _capture_policy(tmp_path, capture, digest, [])
    with pytest.raises(UntrustedSourceError, match="redirect_hosts"):
        fetch_model("m", policy=load_policy(policy), progress=False)
    assert capture.storage_headers == []
    _nothing_stored(tmp_path)


# --- one code path: the drop-ins and the commands --------------------------------------------------


def test_a_poisoned_bin_model_from_oci_loads_through_the_dropins_and_commands(
    tmp_path: Path, registry: OciRegistry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    import transformers

    import safeload.hub
    import safeload.transformers
    from safeload.cli import main
    from tests.helpers.hubserver import tiny_bert_files

    canary = tmp_path / "canary"
    files = tiny_bert_files()
    local = tmp_path / "local"
    local.mkdir()
    for name, data in files.items():
        (local / name).write_bytes(data)
    plain = transformers.AutoModel.from_pretrained(local).eval()
    state = dict(plain.state_dict())
    state["evil"] = Payload(canary)  # a pickle that would run code if unpickled in the host
    buf = io.BytesIO()
    torch.save(state, buf)
    shipped = {k: v for k, v in files.items() if k != "model.safetensors"}
    shipped["pytorch_model.bin"] = buf.getvalue()
    digest = _push(registry, "tiny/bert-bin", shipped)
    policy_path = _policy(
        tmp_path, registry, "tiny/bert-bin", digest, {k: _sha(v) for k, v in shipped.items()}
    )
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy_path))

    model = safeload.transformers.AutoModel.from_pretrained("m").eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, plain(ids).last_hidden_state)
    assert not canary.exists(), "the pickle ran in the host"

    folder = Path(safeload.hub.snapshot_download("m"))
    assert (folder / "pytorch_model.bin").read_bytes() == shipped["pytorch_model.bin"]
    for argv in (
        ["verify"],
        ["prefetch", "m"],
        ["policy", "check", str(policy_path)],
        ["gc"],
        ["bom", "m", "-o", str(tmp_path / "bom.json")],
    ):
        assert main([*argv, "--policy", str(policy_path)] if argv[0] != "policy" else argv) == 0, argv
    component = next(
        c
        for c in json.loads((tmp_path / "bom.json").read_text())["components"]
        if c["type"] == "machine-learning-model"
    )
    assert {p["name"]: p["value"] for p in component["properties"]}["safeload:registry:kind"] == "oci"
    assert not canary.exists()
    assert component["purl"] == (f"pkg:oci/bert-bin@{digest}?repository_url={registry.host}/tiny/bert-bin")


def test_push_attaches_the_evaluation_and_a_pull_requires_it(
    tmp_path: Path, registry: OciRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    from safeload.cli import main

    source = tmp_path / "source"
    model = write_tiny_model(source / "acme" / "evaluated")
    key = generate_key(tmp_path / "keys", "eval")
    (tmp_path / "metrics.json").write_text('{"f1": 0.94}')
    assert (
        main(["attest", str(model), "--metrics", str(tmp_path / "metrics.json"), "--key", str(key.private)])
        == 0
    )
    files = {
        p.relative_to(model).as_posix(): _sha(p.read_bytes())
        for p in model.rglob("*")
        if p.is_file() and p.name != "evaluation.intoto.jsonl"
    }
    signers = {"eval-pipeline": {"kind": "key", "public_key": str(key.public)}}
    requirement = {"signer": "eval-pipeline", "metrics": {"f1": ">= 0.9"}}
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        signers=signers,
        registries={
            "local": {"kind": "directory", "path": str(source)},
            "oci": {"kind": "oci", "endpoint": registry.endpoint},
        },
        models={
            "acme/evaluated": {
                "registry": "local",
                "repo": "acme/evaluated",
                "files": files,
                "require_evaluation": requirement,
            }
        },
    )
    capsys.readouterr()
    assert (
        main(
            [
                "push",
                "acme/evaluated",
                f"oci://{registry.host}/evaluated/m:v1",
                "--policy",
                str(policy),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert "application/vnd.in-toto+json" in out["attached"]
    assert "require_evaluation" in out["entry"]

    puller = write_policy(
        tmp_path / "pull.toml",
        store=tmp_path / "pull-store",
        signers=signers,
        registries={"oci": {"kind": "oci", "endpoint": registry.endpoint}},
    )
    puller.write_text(puller.read_text() + "\n" + out["entry"])
    pulled = fetch_model("acme/evaluated", policy=load_policy(puller), progress=False)
    assert pulled.evaluation is not None and pulled.evaluation.metric("f1") is not None
    assert pulled.evaluation.metric("f1").value == 0.94  # type: ignore[union-attr]
