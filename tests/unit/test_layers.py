"""The tree's layers point one way: every import in the package, function-local ones included.

Base (errors and small helpers) < the jail's host side < the trust chain (policy included) < loading <
the integrations' kit and the supply-chain outputs < the public drop-ins and the CLI. The trust chain
never imports torch; the worker imports only itself and the standard library, except the execute-mode
modules, which exist to run torch (and skops) in the jail.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "safeload"
WORKER = (PACKAGE / "_sandbox" / "worker").resolve()

# Lower number = lower layer; a module may import safeload modules of its own layer or lower ones.
LAYERS: dict[str, int] = {
    "safeload.errors": 0,
    "safeload._units": 0,
    "safeload._relpath": 0,
    "safeload._files": 0,
    "safeload._stub": 0,
    "safeload._sandbox": 0,
    "safeload._jail": 1,
    "safeload.policy": 2,
    "safeload._trust": 2,
    "safeload._loading": 3,
    "safeload._integrations": 4,
    "safeload._supply": 4,
}
PUBLIC = 5
# Allowed: huggingface_hub (the Hub registry reads the token where huggingface-cli put it) and skops
# (pinning reads the type names a skops file lists, building nothing).
HEAVY = ("torch", "numpy", "transformers", "safetensors", "mlflow", "sklearn", "diffusers", "peft")
# MLmodel's class names are checked against the names transformers exports (its lazy module lists them
# without importing a model or torch).
ALLOWED_HEAVY = {"safeload._trust.mlmodel": {"transformers"}}
# The worker modules that run only in the execute-mode jail, whose job is to run these libraries there.
EXECUTE_MODE = {
    "execute": {"torch", "numpy", "joblib"},
    "_skops": {"skops", "numpy", "joblib", "threadpoolctl"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, at any depth, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _layer(module: str) -> int | None:
    if not module.startswith("safeload"):
        return None
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return PUBLIC


def _host_modules() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_sandbox" not in path.relative_to(PACKAGE).parts:
            name = _module_name(path)
            graph[name] = _imports(path, name)
    return graph


HOST = _host_modules()


def test_the_walk_sees_the_whole_package() -> None:
    assert {"safeload._trust.resolve", "safeload._loading.loader", "safeload._jail.launcher"} <= set(HOST)
    assert "safeload._trust.store" in HOST["safeload._trust.resolve"]


@pytest.mark.parametrize("module", sorted(m for m in HOST if _layer(m) != PUBLIC))
def test_imports_point_down(module: str) -> None:
    own = _layer(module)
    assert own is not None
    upward = sorted(
        target for target in HOST[module]
        if (layer := _layer(target)) is not None and layer > own and target.rpartition(".")[0] != module
    )  # fmt: skip
    # "from safeload._trust import store" also records safeload._trust.store: judged by the same rule.
    assert upward == [], f"{module} (layer {own}) imports higher layers: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in HOST if _layer(m) in (1, 2)))
def test_trust_chain_and_jail_never_import_the_ml_stack(module: str) -> None:
    allowed = ALLOWED_HEAVY.get(module, set())
    heavy = sorted(t for t in HOST[module] if t.split(".")[0] in HEAVY and t.split(".")[0] not in allowed)
    assert heavy == [], f"{module} imports {heavy}"


def test_importing_the_trust_chain_loads_no_loader_and_no_torch() -> None:
    """The same rule at run time, through everything the trust chain imports transitively."""
    trust = sorted(m for m in HOST if _layer(m) in (1, 2) and not m.endswith("__main__"))
    code = (
        "import importlib, sys\n"
        f"for m in {trust!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'numpy'}"
        " or m.startswith(('safeload._loading', 'safeload._integrations', 'safeload._supply',"
        " 'safeload.mlflow')))\n"
        "print(len(bad)); print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    count, names = out.stdout.splitlines()[:2]
    assert count == "0", names


@pytest.mark.parametrize("path", sorted(WORKER.glob("*.py")), ids=lambda p: p.stem)
def test_worker_imports_only_itself_and_the_standard_library(path: Path) -> None:
    name = "worker." + path.stem
    allowed = set(sys.stdlib_module_names) | EXECUTE_MODE.get(path.stem, set())
    foreign = sorted(
        target for target in _imports(path, name)
        if not target.startswith("worker") and target.split(".")[0] not in allowed
    )  # fmt: skip
    assert foreign == [], f"{path.name} imports {foreign}"
