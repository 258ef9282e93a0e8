"""The token protocol's parsing and the rule for where credentials may go
(safeload._trust.registries._oci_auth)."""

from __future__ import annotations

import pytest

from safeload._trust.registries._oci_auth import _realm_allowed, parse_challenge


def test_a_bearer_challenge_parses_with_quoted_commas() -> None:
    got = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:acme/m:pull,push"'
    )
    assert got is not None and got.scheme == "bearer"
    assert got.params == {"realm": "https://auth.example.com/token", "service": "registry.example.com",
                          "scope": "repository:acme/m:pull,push"}


@pytest.mark.parametrize("header", [None, "", 'Bearer realm="unterminated', "B@d realm=x", 'Bearer ="x"'])
def test_a_malformed_challenge_is_none(header: str | None) -> None:
    assert parse_challenge(header) is None


@pytest.mark.parametrize(
    ("realm", "endpoint", "hosts", "allowed"),
    [
        ("https://reg.example/token", "https://reg.example", (), True),
        ("https://reg.example:443/token", "https://reg.example", (), True),
        ("https://auth.example/token", "https://reg.example", (), False),
        ("https://auth.example/token", "https://reg.example", ("auth.example",), True),
        ("http://auth.example/token", "https://reg.example", ("auth.example",), False),  # downgrade
        ("http://reg.example/token", "https://reg.example", (), False),
        ("http://127.0.0.1:6000/token", "http://127.0.0.1:5000", (), False),  # another port
        ("http://127.0.0.1:6000/token", "http://127.0.0.1:5000", ("127.0.0.1:6000",), True),
        ("https://user:pw@reg.example/token", "https://reg.example", (), False),
        ("file:///etc/passwd", "https://reg.example", (), False),
        ("", "https://reg.example", (), False),
    ],
)
def test_credentials_go_only_where_a_redirect_may(
    realm: str, endpoint: str, hosts: tuple[str, ...], allowed: bool
) -> None:
    assert _realm_allowed(realm, endpoint, hosts) is allowed
