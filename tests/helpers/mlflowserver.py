"""A real MLflow tracking server for tests, and ways to put models into it.

The server is PyPI's ``mlflow`` (not mlflow-skinny, which cannot serve), started as a subprocess on
127.0.0.1 through this interpreter (``python -m mlflow server``: console scripts in the virtual
environment may be out of reach of an unprivileged test user) with a SQLite backend store, a local
artifact folder served through ``mlflow-artifacts:/`` and background jobs off. It is ready in about 20 s.

API::

    from tests.helpers.mlflowserver import MlflowServer

    server = MlflowServer.start(tmp)                 # on a free port; waits for GET /health
    server.endpoint                                  # "http://127.0.0.1:PORT"
    version = server.add_model("name", {"MLmodel": b"...", "model/config.json": b"{}"})   # REST only
    server.version("name", version)                  # model-versions/get's model_version
    server.download_uri("name", version)             # "mlflow-artifacts:/..."
    server.put_artifact("1/abc/artifacts/MLmodel", b"...")   # overwrite a file under a version
    server.client_env()                              # environment for a child process using mlflow
    server.stop()
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.hubserver import free_port, stop_process, wait_for_http

__all__ = ["MlflowServer"]

_S = TypeVar("_S", bound="MlflowServer")


@dataclass
class MlflowServer:
    """A running ``mlflow server`` process and its backing folders."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    artifacts: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, root: Path, *, timeout: float = 120.0) -> MlflowServer:
        """Start the server under ``root`` and wait until ``GET /health`` answers."""
        return cls._launch(Path(root), [], {}, "mlflow server", timeout)

    @classmethod
    def _launch(
        cls: type[_S], root: Path, args: list[str], env_extra: Mapping[str, str], what: str, timeout: float
    ) -> _S:
        """Run ``mlflow server`` (plus ``args``, with ``env_extra``) under ``root`` until it is healthy."""
        root.mkdir(parents=True, exist_ok=True)
        artifacts = root / "artifacts"
        artifacts.mkdir(exist_ok=True)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SAFELOAD"))}
        env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", HOME=str(root), **env_extra)
        log_path = root / "mlflow.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "mlflow", "server",
                    "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                    "--artifacts-destination", str(artifacts),
                    "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                    *args,
                ],
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        server = cls(root=root, port=port, proc=proc, artifacts=artifacts)
        wait_for_http(server.endpoint + "/health", proc, log_path, what, timeout)
        return server

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------------------------------- REST

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One JSON call to ``/api/2.0/mlflow/<path>`` (GET with ``body`` as the query, else JSON)."""
        url = f"{self.endpoint}/api/2.0/mlflow/{path}"
        data = None
        if method == "GET" and body:
            url += "?" + urllib.parse.urlencode(body)
        elif body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        return json.loads(self._send(req) or b"{}")

    def put_artifact(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` (relative to the artifact root) through the server's PUT."""
        url = f"{self.endpoint}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(path)}"
        self._send(urllib.request.Request(url, data=data, method="PUT"))

    def _send(self, req: urllib.request.Request) -> bytes:
        """Every REST call the helper makes goes through here (a subclass adds its credentials)."""
        with urllib.request.urlopen(req, timeout=30) as resp:
            data: bytes = resp.read()
            return data

    def add_model(self, name: str, files: Mapping[str, bytes], experiment: str = "Default") -> str:
        """A new version of registered model ``name`` holding ``files`` (relative path -> bytes), made
        through REST alone: a run, its artifacts uploaded, the model (if new) and a version whose source
        is the run's folder. Returns the version number."""
        found = self.call("GET", "experiments/get-by-name", {"experiment_name": experiment})
        exp_id = found["experiment"]["experiment_id"]
        run = self.call("POST", "runs/create", {"experiment_id": exp_id})["run"]["info"]
        run_id = run["run_id"]
        for rel, data in files.items():
            self.put_artifact(f"{exp_id}/{run_id}/artifacts/model/{rel}", data)
        try:
            self.call("POST", "registered-models/create", {"name": name})
        except urllib.error.HTTPError as exc:
            if exc.code != 400:
                raise
        source = f"mlflow-artifacts:/{exp_id}/{run_id}/artifacts/model"
        made = self.call("POST", "model-versions/create", {"name": name, "source": source, "run_id": run_id})
        return str(made["model_version"]["version"])

    def version(self, name: str, version: str) -> dict[str, Any]:
        got = self.call("GET", "model-versions/get", {"name": name, "version": version})
        return dict(got["model_version"])

    def download_uri(self, name: str, version: str) -> str:
        got = self.call("GET", "model-versions/get-download-uri", {"name": name, "version": version})
        return str(got["artifact_uri"])

    def client_env(self) -> dict[str, str]:
        """The environment for a child process using mlflow's own client against this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SAFELOAD"))}
        env.update(
            MLFLOW_TRACKING_URI=self.endpoint, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", HOME=str(self.root),
        )  # fmt: skip
        return env
