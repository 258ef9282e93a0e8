"""Tar bombs from a lying OCI registry (Debian's docker-registry on 127.0.0.1), at fetch and at pin time.

Each artifact is a ModelPack with one tar layer holding a small ``config.json`` (the file the entry
pins) beside the attack: sparse members of every flavour tar has (PAX GNU sparse 1.0, 0.1 and 0.0, and
the old GNU type ``S``), which Python's ``tarfile`` reads as regular files whose holes it writes as
zeros (16 of them: a 10 KB layer that unpacks to 240 MiB); a gzip layer of 240 MiB of zeros (about
1000:1); ten thousand empty members; and a member far larger than the file the entry pins. The layers
are built here byte by byte (``tarfile`` cannot write sparse members) and pushed by plain distribution
API calls.

Every one must fail with a typed error, at ``fetch_model`` and at ``safeload pin --resolve``, and the
host must never hold more than a few MiB for it: the store and the temporary folder (where a jail's
output is staged) are measured while the call runs and after it fails.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safeload._trust.pinning import pin_model
from safeload._trust.resolve import fetch_model
from safeload.errors import IntegrityError, PolicyError
from safeload.policy import UnpackBudgets, load_policy, parse_policy
from tests.helpers.ociregistry import OciRegistry
from tests.helpers.trust import write_policy

CONFIG = b'{"model_type": "bert"}'
MIB = 1 << 20
SPARSE_SIZE = 15 * MIB  # under the registry's max_file_size, as the reproduction had it
# What the host may hold at any moment for a refused layer besides the downloaded layer itself: the
# store's metadata and the jail's small reports.
HOST_BUDGET = 4 * MIB


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    server = OciRegistry.start(tmp_path_factory.mktemp("oci-bombs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tmpdir_measured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh TMPDIR (searchable by the jail's uid, as /tmp is), so that what a run stages there is
    this test's alone to measure."""
    path = Path(tempfile.mkdtemp(prefix="safeload-bombs-", dir="/tmp"))
    path.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------ building layers


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def _member(info: tarfile.TarInfo, data: bytes, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    info.size = len(data)
    return info.tobuf(format=fmt) + _pad(data)


def _regular(name: str, data: bytes, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return _member(tarfile.TarInfo(name), data, fmt)


def _end() -> bytes:
    return b"\0" * 1024


def _pax_sparse(name: str, realsize: int, flavour: str) -> bytes:
    """A sparse member with its map in PAX records (GNU tar's ``--format=posix`` formats): all hole."""
    info = tarfile.TarInfo(name)
    data = b""
    if flavour == "1.0":  # the map leads the member's data
        info.pax_headers = {
            "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
            "GNU.sparse.realsize": str(realsize),
        }
        data = _pad(b"1\n%d\n0\n" % realsize)
    elif flavour == "0.1":
        info.pax_headers = {"GNU.sparse.map": f"{realsize},0", "GNU.sparse.size": str(realsize)}
    else:  # 0.0: one offset/numbytes record pair per run
        info.pax_headers = {
            "GNU.sparse.size": str(realsize), "GNU.sparse.numblocks": "1",
            "GNU.sparse.offset": str(realsize), "GNU.sparse.numbytes": "0",
        }
    return _member(info, data)


def _gnu_sparse(name: str, realsize: int) -> bytes:
    """An old GNU sparse member (typeflag ``S``): its map in the header, one empty run at the end."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    hdr = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    hdr[386:398] = b"%011o\0" % realsize  # sparse[0].offset
    hdr[398:410] = b"%011o\0" % 0  # sparse[0].numbytes
    hdr[482] = 0  # isextended
    hdr[483:495] = b"%011o\0" % realsize  # realsize
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr[:512])
    return bytes(hdr)


def _gzip_zeros(members: int, size: int) -> bytes:
    """A gzip tar of ``config.json`` and ``members`` files of ``size`` zero bytes, built streaming."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(_regular("config.json", CONFIG))
        zeros = bytes(MIB)
        for i in range(members):
            info = tarfile.TarInfo(f"zeros-{i}.bin")
            info.size = size
            gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
            for _ in range(size // MIB):
                gz.write(zeros)
        gz.write(_end())
    return out.getvalue()


def _pax_layer(flavour: str) -> bytes:
    return _regular("config.json", CONFIG) + b"".join(
        _pax_sparse(f"sparse-{i}.bin", SPARSE_SIZE, flavour) for i in range(16)
    ) + _end()


def _gnu_layer() -> bytes:
    return (
        _regular("config.json", CONFIG, tarfile.GNU_FORMAT)
        + b"".join(_gnu_sparse(f"sparse-{i}.bin", SPARSE_SIZE) for i in range(16))
        + _end()
    )


def _many_layer() -> bytes:
    empties = b"".join(_regular(f"e/{i}", b"") for i in range(10_000))
    return _regular("config.json", CONFIG) + empties + _end()


def _oversized_layer() -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        info = tarfile.TarInfo("config.json")
        info.size = 64 * MIB
        gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
        zeros = bytes(MIB)
        for _ in range(64):
            gz.write(zeros)
        gz.write(_end())
    return out.getvalue()


# (build the layer, gzip?, registry keys, what the refusal says)
ATTACKS: dict[str, tuple[Callable[[], bytes], bool, dict[str, object], str]] = {
    "pax-sparse-1.0": (lambda: _pax_layer("1.0"), False, {}, r"sparse-0\.bin' is a sparse file"),
    "pax-sparse-0.1": (lambda: _pax_layer("0.1"), False, {}, r"is a sparse file"),
    "pax-sparse-0.0": (lambda: _pax_layer("0.0"), False, {}, r"is a sparse file"),
    "gnu-sparse": (_gnu_layer, False, {}, r"sparse-0\.bin' is a sparse file"),
    "gzip-bomb": (lambda: _gzip_zeros(16, SPARSE_SIZE), True, {}, r"budget max_unpack_ratio = 200"),
    "ten-thousand-members": (
        lambda: gzip.compress(_many_layer()), True, {"max_unpacked_files": 1000},
        r"more than 1000 entries.*budget max_unpacked_files",
    ),
    "member-over-its-pin": (
        _oversized_layer, True, {"max_unpack_ratio": 100_000},
        r"config\.json.*budget max_file_size = 16777216",
    ),
}


def _push_layer(registry: OciRegistry, repo: str, layer: bytes, gz: bool) -> str:
    media = "application/vnd.cncf.model.weight.v1.tar" + ("+gzip" if gz else "")
    config = json.dumps({"descriptor": {"name": repo}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.cncf.model.config.v1+json",
            "digest": registry.push_blob(repo, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": media,
                "digest": registry.push_blob(repo, layer),
                "size": len(layer),
                "annotations": {"org.cncf.model.filepath": "model"},
            }
        ],
    }
    return registry.push_manifest(repo, manifest, "v1")


def _du(*roots: Path) -> int:
    total = 0
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_blocks * 512
                except OSError:
                    pass
    return total


class _Peak:
    """The largest size the measured folders reached while a call ran (sampled every 20 ms)."""

    def __init__(self, *roots: Path) -> None:
        self.roots = roots
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _du(*self.roots))

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _du(*self.roots))


def _registries(registry: OciRegistry, extra: dict[str, object]) -> dict[str, dict[str, object]]:
    return {"oci": {"kind": "oci", "endpoint": registry.endpoint, "max_file_size": "16MiB", **extra}}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_tar_bomb_is_refused_at_fetch_time_and_writes_nothing_large(
    tmp_path: Path, registry: OciRegistry, tmpdir_measured: Path, attack: str
) -> None:
    build, gz, extra, refusal = ATTACKS[attack]
    layer = build()
    repo = f"bomb/fetch-{attack}"
    digest = _push_layer(registry, repo, layer, gz)
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries=_registries(registry, extra),
        models={
            "m": {"registry": "oci", "repo": repo, "revision": digest, "files": {"config.json": _sha(CONFIG)}}
        },
    )
    with _Peak(tmp_path / "store", tmpdir_measured) as peak, pytest.raises(IntegrityError, match=refusal):
        fetch_model("m", policy=load_policy(policy), progress=False)
    held = f"the host held {peak.peak} bytes for a {len(layer)}-byte layer"
    assert peak.peak < HOST_BUDGET + len(layer), held
    assert _du(tmp_path / "store", tmpdir_measured) < HOST_BUDGET
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.stat().st_size > MIB]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_tar_bomb_is_refused_at_pin_time_and_pins_nothing(
    tmp_path: Path, registry: OciRegistry, tmpdir_measured: Path, attack: str
) -> None:
    build, gz, extra, refusal = ATTACKS[attack]
    layer = build()
    repo = f"bomb/pin-{attack}"
    _push_layer(registry, repo, layer, gz)
    policy = write_policy(
        tmp_path / "trust.toml", store=tmp_path / "store", registries=_registries(registry, extra)
    )
    before = policy.read_text()
    with _Peak(tmp_path / "store", tmpdir_measured) as peak, pytest.raises(IntegrityError, match=refusal):
        pin_model(f"oci://{registry.host}/{repo}:v1", policy_path=policy, name="m", resolve=True)
    assert policy.read_text() == before
    held = f"the host held {peak.peak} bytes for a {len(layer)}-byte layer"
    assert peak.peak < HOST_BUDGET + len(layer), held
    assert _du(tmp_path / "store", tmpdir_measured) < HOST_BUDGET


def test_a_budget_refusal_says_how_to_raise_it(tmp_path: Path, registry: OciRegistry) -> None:
    repo = "bomb/hint"
    _push_layer(registry, repo, _many_layer(), False)
    policy = write_policy(
        tmp_path / "trust.toml", store=tmp_path / "store",
        registries=_registries(registry, {"max_unpacked_files": 100}),
    )
    with pytest.raises(IntegrityError) as caught:
        pin_model(f"oci://{registry.host}/{repo}:v1", policy_path=policy, name="m", resolve=True)
    assert "raise max_unpacked_files in [registries.oci] of trust.toml" in str(caught.value)
    assert getattr(caught.value, "budget", None) == "max_unpacked_files"


def test_a_gzip_folder_layer_within_its_budgets_pins_and_loads(
    tmp_path: Path, registry: OciRegistry, tmpdir_measured: Path
) -> None:
    files = {"config.json": CONFIG, "tokenizer/vocab.txt": b"[PAD]\nhello\n" * 100, "tokenizer/empty": b""}
    plain = b"".join(_regular(name, data) for name, data in files.items()) + _end()
    repo = "bomb/fine"
    digest = _push_layer(registry, repo, gzip.compress(plain), True)
    policy = write_policy(
        tmp_path / "trust.toml", store=tmp_path / "store",
        registries=_registries(registry, {"max_unpacked": "1MiB", "max_unpacked_files": 10}),
    )
    _, entry = pin_model(f"oci://{registry.host}/{repo}:v1", policy_path=policy, name="m", resolve=True)
    assert entry.revision == digest
    assert dict(entry.files) == {name: _sha(data) for name, data in files.items()}
    fetched = fetch_model("m", policy=load_policy(policy), progress=False)
    for name, data in files.items():
        assert (fetched.folder / name).read_bytes() == data


def test_unpack_budgets_are_read_from_the_registry_table() -> None:
    base = "version = 1\n[registries.oci]\nkind = 'oci'\nendpoint = 'http://127.0.0.1:5000'\n"
    spec = parse_policy(base).registries["oci"]
    assert getattr(spec, "unpack", None) == UnpackBudgets()
    text = base + "max_unpacked = '2GiB'\nmax_unpacked_files = 50\nmax_unpack_ratio = 20\n"
    spec = parse_policy(text).registries["oci"]
    assert getattr(spec, "unpack", None) == UnpackBudgets(max_bytes=2 << 30, max_members=50, max_ratio=20)
    with pytest.raises(PolicyError, match=r"registries\.oci\.max_unpacked_files: must be a positive integer"):
        parse_policy(base + "max_unpacked_files = 0\n")
    with pytest.raises(PolicyError, match=r"registries\.oci\.max_unpacked"):
        parse_policy(base + "max_unpacked = 'lots'\n")
