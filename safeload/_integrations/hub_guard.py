"""The HTTP guard ``safeload.patch()`` puts in huggingface_hub's client: no request to an unnamed origin.

Routing ``snapshot_download`` and ``hf_hub_download`` through the policy is not enough: libraries call
``model_info``, ``file_exists``, ``list_repo_files``, ``HfFileSystem`` or the shared session directly
before (or instead of) downloading, and each of those requests carries the model name and the user's
token to ``HF_ENDPOINT``. So while patched, every ``httpx2`` client huggingface_hub hands out (the
shared one from ``get_session()``, each one from ``get_async_session()``, and the shared client that
existed before ``patch()``) runs :func:`check` as its first request hook, on every request and every
redirect hop, before a connection is opened. The rule:

- a request to the ``endpoint`` of one of the policy's ``huggingface`` registries (same scheme, host
  and port) is let through;
- a request to one of such a registry's ``redirect_hosts`` is let through only without credentials
  (no ``Authorization`` header), as for the registry's own downloads;
- anything else raises :class:`~safeload.errors.UntrustedSourceError` naming the origin and how to
  allow it, and nothing is sent.

Safeload's own downloads never use huggingface_hub (they run in the fetch jail), so this costs them
nothing. What huggingface_hub fetches from a named endpoint by other means than the patched download
functions (``model_info``, a raw GET through its session) is not checked against any pin; only the
store's files are verified. The policy is read at each request, so a changed ``SAFELOAD_POLICY`` takes
effect at once; a policy that cannot be read refuses every request (its ``PolicyError``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from safeload.errors import UntrustedSourceError

__all__ = ["check", "install"]


def _show(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def check(method: str, url: str, *, credentials: bool) -> None:
    """Refuse a huggingface_hub request to an origin the policy does not name.

    Raises:
        UntrustedSourceError: the origin is not a policy huggingface registry's endpoint (or, without
            credentials, one of its ``redirect_hosts``).
        PolicyError: the policy cannot be read.
    """
    from safeload._sandbox.worker._http_rules import RuleError, host_allowed, origin_of
    from safeload.policy import HuggingFaceRegistrySpec, load_policy

    policy = load_policy()
    where = str(policy.source) if policy.source else "the built-in policy"
    try:
        origin = origin_of(url)
    except RuleError as exc:
        raise UntrustedSourceError(
            f"huggingface_hub tried to send {method} {_show(url)} while safeload.patch() is in effect, "
            f"and it is not a URL safeload lets it reach ({exc}); nothing was sent"
        ) from None
    parts = urlsplit(origin)
    host, port = parts.hostname or "", parts.port or 0
    hubs = [spec for spec in policy.registries.values() if isinstance(spec, HuggingFaceRegistrySpec)]
    for spec in hubs:
        if origin_of(spec.endpoint) == origin:
            return
    for spec in hubs:
        if host_allowed(host, port, spec.redirect_hosts):
            if not credentials:
                return
            raise UntrustedSourceError(
                f"huggingface_hub tried to send credentials with {method} {_show(url)} while "
                f"safeload.patch() is in effect; {origin} is one of [registries.{spec.name}] redirect_hosts "
                f"in {where}, which receive no credentials, so nothing was sent"
            )
    raise UntrustedSourceError(
        f"huggingface_hub tried to reach {origin} ({method} {_show(url)}) while safeload.patch() is in "
        f"effect, and {where} names no huggingface registry there, so nothing was sent (no model name, "
        "no token). Pinned models load through the policy without huggingface_hub: use the name of a "
        f"[models] entry. If huggingface_hub itself may talk to {origin}, name it in the policy: "
        f'[registries.NAME] kind = "huggingface", endpoint = "{origin}" (or add its host:port to an '
        "existing huggingface registry's redirect_hosts, for requests without credentials)"
    )


def _hook(request: Any) -> None:
    check(str(request.method), str(request.url), credentials="authorization" in request.headers)


async def _async_hook(request: Any) -> None:
    _hook(request)


def _guard(client: Any, hook: Callable[..., Any]) -> Any:
    hooks = client.event_hooks["request"]
    if hook not in hooks:
        hooks.insert(0, hook)
    return client


def _unguard(client: Any, hook: Callable[..., Any]) -> None:
    hooks = client.event_hooks["request"]
    while hook in hooks:
        hooks.remove(hook)


def guarded_factory(factory: Callable[[], Any]) -> Callable[[], Any]:
    """``factory`` (huggingface_hub's sync client factory), whose clients run the guard first."""

    @functools.wraps(factory)
    def make() -> Any:
        return _guard(factory(), _hook)

    return make


def guarded_async_factory(factory: Callable[[], Any]) -> Callable[[], Any]:
    """``factory`` (huggingface_hub's async client factory), whose clients run the guard first."""

    @functools.wraps(factory)
    def make() -> Any:
        return _guard(factory(), _async_hook)

    return make


def install() -> tuple[list[tuple[object, str, object]], Callable[[], None]]:
    """Guard huggingface_hub's HTTP layer.

    Returns the attribute replacements for ``safeload._patching`` to install and restore like
    its others
    (``set_client_factory`` and ``set_async_client_factory``, which while patched guard whatever factory
    they are given), and an undo function that puts back the factories and the shared client exactly as
    they were (closing the guarded client made meanwhile). The installation itself happens here.
    """
    import huggingface_hub
    import huggingface_hub.utils
    from huggingface_hub.utils import _http

    def set_client_factory(client_factory: Callable[[], Any]) -> None:
        real_set(guarded_factory(client_factory))

    def set_async_client_factory(async_client_factory: Callable[[], Any]) -> None:
        real_set_async(guarded_async_factory(async_client_factory))

    real_set: Callable[[Callable[[], Any]], None] = _http.set_client_factory
    real_set_async: Callable[[Callable[[], Any]], None] = _http.set_async_client_factory
    functools.update_wrapper(set_client_factory, real_set)
    functools.update_wrapper(set_async_client_factory, real_set_async)
    replacements: list[tuple[object, str, object]] = []
    for module in (_http, huggingface_hub.utils, huggingface_hub):
        replacements.append((module, "set_client_factory", set_client_factory))
        replacements.append((module, "set_async_client_factory", set_async_client_factory))

    with _http._CLIENT_LOCK:
        factory = _http._GLOBAL_CLIENT_FACTORY
        async_factory = _http._GLOBAL_ASYNC_CLIENT_FACTORY
        client = _http._GLOBAL_CLIENT
        _http._GLOBAL_CLIENT_FACTORY = guarded_factory(factory)
        _http._GLOBAL_ASYNC_CLIENT_FACTORY = guarded_async_factory(async_factory)
        _http._GLOBAL_CLIENT = None  # the next get_session() makes a guarded one
        if client is not None:
            _guard(client, _hook)  # for whoever kept a reference to it

    def undo() -> None:
        with _http._CLIENT_LOCK:
            made = _http._GLOBAL_CLIENT
            _http._GLOBAL_CLIENT_FACTORY = factory
            _http._GLOBAL_ASYNC_CLIENT_FACTORY = async_factory
            _http._GLOBAL_CLIENT = client
            if client is not None:
                _unguard(client, _hook)
        if made is not None and made is not client:
            made.close()

    return replacements, undo
