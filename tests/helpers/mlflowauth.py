"""A real MLflow tracking server with basic auth (``--app-name basic-auth``), for registry tests.

Same server as :mod:`tests.helpers.mlflowserver`, started with mlflow's basic-auth app (needs
``mlflow[auth]``) and an auth config of its own: ``default_permission = NO_PERMISSIONS``, so a user other
than the admin reads only what :meth:`AuthMlflowServer.grant` gives it. Every REST call the helper makes
(``call``, ``put_artifact``, ``add_model``...) is the admin's. Ready in 7-21 s; start one per module.

API::

    from tests.helpers.mlflowauth import AuthMlflowServer

    server = AuthMlflowServer.start(tmp)
    version = server.add_model("name", {"MLmodel": b"..."})          # as the admin, experiment "0"
    server.add_user("reader", "reader-password")                      # mlflow wants 12 characters or more
    server.grant("reader", "registered_model", "name")                # READ on the model
    server.grant("reader", "experiment", "0")                         # ...and on its files' experiment
    server.requests()                                                 # every request line in the log
    server.stop()
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.mlflowserver import MlflowServer

__all__ = ["AuthMlflowServer", "basic"]

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-password-for-tests-only"


def basic(user: str, password: str) -> str:
    """The ``Authorization`` value of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@dataclass
class AuthMlflowServer(MlflowServer):
    """A running ``mlflow server --app-name basic-auth``; REST calls here go as the admin."""

    @classmethod
    def start(cls, root: Path, *, timeout: float = 120.0) -> AuthMlflowServer:
        """Start the basic-auth server under ``root`` and wait until ``GET /health`` answers."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        config = root / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{root / 'auth.db'}\n"
            f"admin_username = {ADMIN_USER}\nadmin_password = {ADMIN_PASSWORD}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # A successful check is cached, or every request pays mlflow's PBKDF2 (a wrong password,
            # which is never cached, is still refused at once).
            "auth_cache_ttl_seconds = 600\n"
        )
        extra = {
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),  # the CSRF key the auth app insists on
        }
        return cls._launch(root, ["--app-name", "basic-auth"], extra, "mlflow server (basic auth)", timeout)

    def _send(self, req: urllib.request.Request) -> bytes:
        req.add_header("Authorization", basic(ADMIN_USER, ADMIN_PASSWORD))
        return super()._send(req)

    def add_user(self, username: str, password: str) -> None:
        """A basic-auth user with no permissions of its own (mlflow wants a 12-character password)."""
        self.call("POST", "users/create", {"username": username, "password": password})

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str = "READ") -> None:
        """Give ``username`` ``permission`` on one resource: ``"experiment"`` by id, ``"registered_model"``
        by name."""
        body = {"username": username, "resource_type": resource_type, "resource_id": resource_id,
                "permission": permission}  # fmt: skip
        req = urllib.request.Request(
            f"{self.endpoint}/api/3.0/mlflow/users/permissions/grant",
            data=json.dumps(body).encode(), method="POST",
        )  # fmt: skip
        req.add_header("Content-Type", "application/json")
        self._send(req)

    def requests(self) -> list[str]:
        """Every request line the server has logged so far (``GET /api/... HTTP/1.1``)."""
        text = (self.root / "mlflow.log").read_text(errors="replace")
        return [line.split('"')[1] for line in text.splitlines() if line.count('"') >= 2 and "HTTP/" in line]

    def client_env(self) -> dict[str, str]:
        """The environment for a child process using mlflow's own client, as the admin."""
        env = super().client_env()
        env.update(MLFLOW_TRACKING_USERNAME=ADMIN_USER, MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
        return env
