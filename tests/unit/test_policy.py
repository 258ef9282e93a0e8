"""trust.toml parsing: good files parse into the expected values, every bad field names its dotted path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safeload._trust.signing import CertificateSigner, KeySigner, SigstoreSigner
from safeload._units import parse_duration, parse_size
from safeload.errors import PolicyError
from safeload.policy import (
    DirectoryRegistrySpec,
    HuggingFaceRegistrySpec,
    Policy,
    dotted,
    load_policy,
    parse_policy,
)

C = "4c7f9e0f3b1a2d5e6f708192a3b4c5d6e7f80912"
D = "sha256:" + "ab" * 32

GOOD = f"""
version = 1
mode = "audit"
store = "store"
audit_log = "logs/audit.jsonl"
require_signatures = false

[sandbox]
unpickler = "execute"
timeout = "2m"
memory = "512MiB"
max_output = "1GiB"

[registries.hub]
kind = "huggingface"
endpoint = "http://127.0.0.1:9/"
token_env = "ACME_TOKEN"
max_file_size = "20GiB"
[registries.local]
kind = "directory"
path = "models"

[signers.k]
kind = "key"
public_key = "keys/acme.pub"
[signers.c]
kind = "certificate"
chain = ["ca.pem", "/abs/int.pem"]
leaf_subject = "CN=acme"
[signers.s]
kind = "sigstore"
identity = "me@example.com"
issuer = "https://accounts.example.com"
trusted_root = "root.json"
trusted_root_sha256 = "{D}"

[models."acme/sentiment"]
registry = "hub"
repo = "acme/sentiment-classifier"
revision = "{C}"
signer = "k"
files = {{ "model.safetensors" = "{D}", "sub/config.json" = "{D}" }}

[models.local-one]
registry = "local"
files = {{ "w.safetensors" = "{D}" }}

[files]
"/srv/legacy/classifier.pt" = "{D}"
"rel/x.pt" = "{D}"
"""


def test_good_policy_parses(tmp_path: Path) -> None:
    src = tmp_path / "trust.toml"
    p = parse_policy(GOOD, source=src)
    assert p.mode == "audit" and p.version == 1 and p.source == src
    assert p.store == tmp_path / "store"
    assert p.audit_log == tmp_path / "logs/audit.jsonl"
    assert p.sandbox.unpickler == "execute"
    assert p.sandbox.timeout_s == 120.0
    assert p.sandbox.memory_bytes == 512 << 20
    assert p.sandbox.max_output_bytes == 1 << 30
    assert p.registries["hub"] == HuggingFaceRegistrySpec(
        name="hub", endpoint="http://127.0.0.1:9", token_env="ACME_TOKEN", max_file_bytes=20 << 30
    )
    assert p.registries["local"] == DirectoryRegistrySpec(name="local", path=tmp_path / "models")
    assert p.signers["k"] == KeySigner("k", tmp_path / "keys/acme.pub")
    assert p.signers["c"] == CertificateSigner(
        "c", (tmp_path / "ca.pem", Path("/abs/int.pem")), leaf_subject="CN=acme"
    )
    assert p.signers["s"] == SigstoreSigner(
        "s", "me@example.com", "https://accounts.example.com", tmp_path / "root.json", D
    )
    m = p.models["acme/sentiment"]
    assert (m.registry, m.repo, m.revision, m.signer, m.signature_path) == (
        "hub", "acme/sentiment-classifier", C, "k", "model.sig"
    )  # fmt: skip
    assert dict(m.files) == {"model.safetensors": D, "sub/config.json": D}
    local = p.models["local-one"]
    assert local.repo == "local-one" and local.revision is None
    assert local.store_revision().startswith("pins-") and len(local.store_revision()) == 45
    assert dict(p.files) == {"/srv/legacy/classifier.pt": D, str(tmp_path / "rel/x.pt"): D}


def test_directory_store_revision_changes_with_pins() -> None:
    base = '[registries.l]\nkind = "directory"\npath = "/m"\n[models.a]\nregistry = "l"\n'
    one = parse_policy(f'version = 1\n{base}files = {{ "w" = "{D}" }}\n').models["a"]
    two = parse_policy(f'version = 1\n{base}files = {{ "w" = "sha256:{"cd" * 32}" }}\n').models["a"]
    assert one.store_revision() != two.store_revision()


def test_default_policy_resolves_nothing() -> None:
    p = Policy()
    assert p.mode == "enforce" and not p.models and not p.registries and not p.files


HUB = '[registries.hub]\nkind = "huggingface"\nendpoint = "https://huggingface.co"\n'
SIG = '[signers.k]\nkind = "key"\npublic_key = "k.pub"\n'


def model(body: str, name: str = "acme/m") -> str:
    return f'version = 1\n{HUB}{SIG}[models."{name}"]\n{body}\n'


OK_MODEL = f'registry = "hub"\nrevision = "{C}"\nfiles = {{ "a" = "{D}" }}'

# (toml text, the dotted path the error must start with, a fragment saying what is allowed)
BAD: list[tuple[str, str, str]] = [
    ("version = 2\n", "version:", "must be one of [1]"),
    ("mode = 'enforce'\n", "version:", "is required"),
    ("version = true\n", "version:", "must be one of"),
    ("version = 1\nmode = 'strict'\n", "mode:", "'enforce', 'audit'"),
    ("version = 1\nstore = 3\n", "store:", "non-empty string"),
    ("version = 1\naudit_log = ''\n", "audit_log:", "non-empty string"),
    ("version = 1\nrequire_signatures = 'yes'\n", "require_signatures:", "true or false"),
    ("version = 1\nunknown = 1\n", "unknown:", "unknown key"),
    ("version = 1\nsandbox = 3\n", "sandbox:", "must be a table"),
    ("version = 1\n[sandbox]\ntimeout = 'soon'\n", "sandbox.timeout:", "'120s'"),
    ("version = 1\n[sandbox]\ntimeout = -1\n", "sandbox.timeout:", "positive"),
    ("version = 1\n[sandbox]\nmemory = '8 parsecs'\n", "sandbox.memory:", "'8GiB'"),
    ("version = 1\n[sandbox]\nmax_output = 0\n", "sandbox.max_output:", "positive"),
    ("version = 1\n[sandbox]\nunpickler = 'exec'\n", "sandbox.unpickler:", "'inert', 'execute'"),
    ("version = 1\n[sandbox]\ncpu = 1\n", "sandbox.cpu:", "unknown key"),
    ("version = 1\n[registries.hub]\nendpoint = 'https://x'\n", "registries.hub.kind:", "is required"),
    ("version = 1\n[registries.hub]\nkind = 's3'\n", "registries.hub.kind:",
     "'huggingface', 'directory', 'oci'"),
    ("version = 1\n[registries.o]\nkind = 'oci'\nendpoint = 'http://r'\nnamespace = '../x'\n",
     "registries.o.namespace:", "repository id"),
    ("version = 1\n[registries.o]\nkind = 'oci'\nendpoint = 'http://r'\n[models.m]\nregistry = 'o'\n"
     "revision = 'v1'\nfiles = { a = 'sha256:" + "0" * 64 + "' }\n", "models.m.revision:", "manifest digest"),
    ("version = 1\n[registries.hub]\nkind = 'huggingface'\n", "registries.hub.endpoint:", "is required"),
    ("version = 1\n[registries.hub]\nkind = 'huggingface'\nendpoint = 'ftp://x'\n",
     "registries.hub.endpoint:", "http(s) URL"),
    ("version = 1\n[registries.hub]\nkind = 'huggingface'\nendpoint = 'https://user:pw@hub.example'\n",
     "registries.hub.endpoint:", "no credentials"),
    ("version = 1\n[registries.hub]\nkind = 'huggingface'\nendpoint = 'https://hub.example/?x=1'\n",
     "registries.hub.endpoint:", "query"),
    ("version = 1\n[registries.hub]\nkind = 'huggingface'\nendpoint = 'https://hub.example:99999'\n",
     "registries.hub.endpoint:", "http(s) URL"),
    ("version = 1\n" + HUB + "redirect_hosts = 'cdn.example'\n", "registries.hub.redirect_hosts:", "a list"),
    ("version = 1\n" + HUB + "redirect_hosts = ['*']\n", "registries.hub.redirect_hosts:", "bare '*'"),
    ("version = 1\n" + HUB + "redirect_hosts = ['https://cdn.example/x']\n", "registries.hub.redirect_hosts:",
     "no scheme, path"),
    ("version = 1\n" + HUB + "max_file_size = '5 tons'\n", "registries.hub.max_file_size:", "'8GiB'"),
    ("version = 1\n" + HUB + "max_file_size = 0\n", "registries.hub.max_file_size:", "positive"),
    ("version = 1\n[registries.d]\nkind = 'directory'\npath = '/x'\nmax_file_size = '1GiB'\n",
     "registries.d.max_file_size:", "unknown key"),
    ("version = 1\n[registries.d]\nkind = 'directory'\n", "registries.d.path:", "is required"),
    ("version = 1\n[registries.d]\nkind = 'directory'\npath = '/x'\nendpoint = 'http://x'\n",
     "registries.d.endpoint:", "unknown key"),
    ("version = 1\n[signers.k]\nkind = 'key'\n", "signers.k.public_key:", "is required"),
    ("version = 1\n[signers.k]\nkind = 'gpg'\n", "signers.k.kind:", "'key', 'certificate', 'sigstore'"),
    ("version = 1\n[signers.c]\nkind = 'certificate'\nchain = []\nleaf_subject = 'x'\n", "signers.c.chain:",
     "never the web roots"),
    ("version = 1\n[signers.c]\nkind = 'certificate'\nchain = ['a.pem']\n", "signers.c:", "leaf_sha256"),
    ("version = 1\n[signers.c]\nkind = 'certificate'\nchain = ['a.pem']\nleaf_sha256 = 'abc'\n",
     "signers.c.leaf_sha256:", "64 lowercase hex"),
    ("version = 1\n[signers.s]\nkind = 'sigstore'\nidentity = 'a'\ntrusted_root = 'r.json'\n",
     "signers.s.issuer:", "is required"),
    ("version = 1\n[signers.s]\nkind = 'sigstore'\nidentity = 'a'\nissuer = 'http://x'\ntrusted_root = 'r'\n",
     "signers.s.issuer:", "https://"),
    ("version = 1\n[signers.s]\nkind = 'sigstore'\nissuer = 'https://x'\ntrusted_root = 'r'\n",
     "signers.s.identity:", "is required"),
    ("version = 1\n[signers.s]\nkind = 'sigstore'\nidentity = 'a'\nissuer = 'https://x'\ntrusted_root = 'r'\n"
     "trusted_root_sha256 = 'md5:1'\n", "signers.s.trusted_root_sha256:", "sha256:"),
    (model(f'registry = "hub"\nrevision = "main"\nfiles = {{ "a" = "{D}" }}'), 'models."acme/m".revision:',
     "must be a 40-hex commit id, got 'main'"),
    (model(f'registry = "hub"\nrevision = "{C[:12]}"\nfiles = {{ "a" = "{D}" }}'),
     'models."acme/m".revision:', "40-hex commit"),
    (model(f'registry = "hub"\nrevision = "{C.upper()}"\nfiles = {{ "a" = "{D}" }}'),
     'models."acme/m".revision:', "40-hex commit"),
    (model(f'registry = "hub"\nfiles = {{ "a" = "{D}" }}'), 'models."acme/m".revision:', "is required"),
    (model(f'revision = "{C}"\nfiles = {{ "a" = "{D}" }}'), 'models."acme/m".registry:', "is required"),
    (model(f'registry = "nope"\nrevision = "{C}"\nfiles = {{ "a" = "{D}" }}'), 'models."acme/m".registry:',
     "known: hub"),
    (model(f'registry = "hub"\nrevision = "{C}"'), 'models."acme/m".files:', "at least one file"),
    (model(f'registry = "hub"\nrevision = "{C}"\nfiles = {{ "a" = "sha1:00" }}'), 'models."acme/m".files.a:',
     "sha256:"),
    (model(f'registry = "hub"\nrevision = "{C}"\nfiles = {{ "../etc/passwd" = "{D}" }}'),
     'models."acme/m".files."../etc/passwd":', "without '..'"),
    (model(f'registry = "hub"\nrevision = "{C}"\nfiles = {{ "/abs" = "{D}" }}'),
     'models."acme/m".files."/abs":', "relative path"),
    (model(f'{OK_MODEL}\nsigner = "ghost"'), 'models."acme/m".signer:', "known: k"),
    (model(f'{OK_MODEL}\nsignature = "x.sig"'), 'models."acme/m".signature:', "only makes sense with"),
    (model(f'{OK_MODEL}\nsigner = "k"\nsignature = "../x.sig"'), 'models."acme/m".signature:',
     "without '..'"),
    (model(f'{OK_MODEL}\nrepo = "a/../b"'), 'models."acme/m".repo:', "repository id"),
    (model(f"{OK_MODEL}\nbranch = 'main'"), 'models."acme/m".branch:', "unknown key"),
    (model(OK_MODEL).replace("version = 1\n", "version = 1\nrequire_signatures = true\n"),
     'models."acme/m".signer:', "require_signatures"),
    ("version = 1\n[files]\n'/x' = 'sha256:zz'\n", 'files."/x":', "64 lowercase hex"),
    ("version = 1\nmodels = 3\n", "models:", "must be a table"),
    ("version = [1\n", "", "not valid TOML"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "where", "allowed"), BAD, ids=[f"{i}:{b[1] or 'toml'}" for i, b in enumerate(BAD)]
)
def test_malformed_policy_names_the_field(text: str, where: str, allowed: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    msg = str(info.value)
    assert msg.startswith(where), msg
    assert allowed in msg, msg


def test_error_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "trust.toml"
    with pytest.raises(PolicyError, match=rf"^{src}: mode:"):
        parse_policy("version = 1\nmode = 'x'\n", source=src)


def test_dotted_quotes_only_when_needed() -> None:
    assert dotted("models", "acme/sentiment", "revision") == 'models."acme/sentiment".revision'
    assert dotted("signers", "acme-ci") == "signers.acme-ci"
    assert dotted("files", 'we"ird') == 'files."we\\"ird"'


@pytest.mark.parametrize(
    ("raw", "seconds"), [(5, 5.0), (0.5, 0.5), ("500ms", 0.5), ("120s", 120.0), ("5m", 300.0), ("1h", 3600.0)]
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(
    ("raw", "size"),
    [(1024, 1024), ("8GiB", 8 << 30), ("512MiB", 512 << 20), ("1GB", 10**9), ("2K", 2048), ("10 B", 10)],
)
def test_sizes(raw: object, size: int) -> None:
    assert parse_size(raw) == size


@pytest.mark.parametrize("raw", [True, "", "8 GiBs", -1, 0, "1.5.2G", None])
def test_bad_sizes(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_size(raw)


# ------------------------------------------------------------------------------------------ discovery


def _write(path: Path, mode: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'version = 1\nmode = "{mode}"\n')
    return path


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.delenv("SAFELOAD_POLICY", raising=False)
    assert load_policy() == Policy()  # nothing anywhere: the built-in default

    user = _write(home / ".config/safeload/trust.toml", "audit")
    assert load_policy().source == user.absolute()

    cwd = _write(work / "trust.toml", "enforce")
    assert load_policy().source == cwd.absolute()

    env = _write(tmp_path / "env.toml", "audit")
    monkeypatch.setenv("SAFELOAD_POLICY", str(env))
    assert load_policy().source == env.absolute()

    arg = _write(tmp_path / "arg.toml", "enforce")
    assert load_policy(arg).source == arg.absolute()
    assert load_policy(os.fspath(arg)).source == arg.absolute()
    p = Policy(mode="audit")
    assert load_policy(p) is p


def test_missing_named_policy_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "nope.toml")
    monkeypatch.setenv("SAFELOAD_POLICY", str(tmp_path / "gone.toml"))
    with pytest.raises(PolicyError, match="not found"):
        load_policy()


def test_example_policy_parses() -> None:
    example = Path(__file__).resolve().parents[2] / "trust.toml.example"
    policy = parse_policy(example.read_text(), source=example)
    assert policy.models and policy.registries and policy.signers


def test_redirect_hosts_default_to_the_hubs_own_cdns_only() -> None:
    hub = parse_policy("version = 1\n" + HUB).registries["hub"]
    assert getattr(hub, "redirect_hosts") == ("*.huggingface.co", "*.hf.co")
    mirror = parse_policy("version = 1\n[registries.m]\nkind = 'huggingface'\nendpoint = 'http://127.0.0.1:9'\n")
    assert getattr(mirror.registries["m"], "redirect_hosts") == ()
    named = parse_policy("version = 1\n" + HUB + "redirect_hosts = ['CDN.example:8443', '*.b.example']\n")
    assert getattr(named.registries["hub"], "redirect_hosts") == ("cdn.example:8443", "*.b.example")
