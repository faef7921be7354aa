"""The package's dependency direction (STYLE.md), checked by walking every module's imports with
``ast``: the SRN core needs only torch, data needs nothing of ours, metrics never import the
trainers, and nothing imports the CLI or the reproduction pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "stablerank"
CORE = {"linalg", "srn", "apply", "layers"}

# Leaf utilities (standard library only) that every layer may import.
LEAVES = {"_optional"}
# layer -> the package layers it may import (besides itself and the leaves)
ALLOWED = {
    "core": CORE,
    "data": set(),
    "models": CORE,
    "metrics": CORE,
    "config": {"config"},
    "train": CORE | {"models", "data", "metrics", "config", "train"},
    "repro": CORE | {"models", "data", "metrics", "config", "train", "repro"},
    "cli": {"config", "train", "layers", "repro"} | CORE,
    "__init__": CORE,
    "__main__": {"cli"},
    "_optional": set(),
}


def _layer(module: str) -> str:
    top = module.split(".")[0]
    return "core" if top in CORE else top


def _package_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("stablerank")
        ):
            rest = node.module.split(".")[1:]
            if rest:
                found.add(rest[0])
            else:  # from stablerank import x
                found.update(a.name for a in node.names if a.name != "__version__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("stablerank."):
                    found.add(a.name.split(".")[1])
    return found


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        yield ".".join(rel.parts), path


@pytest.mark.parametrize(("module", "path"), list(_modules()), ids=lambda v: str(v))
def test_imports_follow_the_dependency_direction(module, path):
    layer = _layer(module)
    allowed = ALLOWED[layer] | ({layer} if layer != "core" else CORE)
    imported = {_layer(m) if m in CORE else m for m in _package_imports(path)}
    imported = {"core" if m in CORE else m for m in imported}
    allowed = {"core" if m in CORE else m for m in allowed}
    if layer == "core":
        # the core may import only the core
        allowed = {"core"}
    bad = imported - allowed - {"__version__"} - (LEAVES if layer not in LEAVES else set())
    assert not bad, f"{module} ({layer}) imports {sorted(bad)}; allowed: {sorted(allowed)}"


def test_nothing_imports_cli_or_repro():
    for module, path in _modules():
        if _layer(module) in ("cli", "repro", "__main__"):
            continue
        assert not ({"cli", "repro"} & _package_imports(path)), module


def test_no_import_cycles_in_core():
    # linalg <- srn <- apply <- layers, each importing only the ones before it
    order = ["linalg", "srn", "apply", "layers"]
    for i, name in enumerate(order):
        imported = _package_imports(SRC / f"{name}.py") & CORE
        assert imported <= set(order[:i]), f"{name} imports {imported}"


def test_the_orchestration_count_runs_and_its_parts_add_up():
    """``scripts/orchestration_size.py`` (docs/reproduction.md's size table) names functions of
    the package: a rename broke it without a test noticing."""
    import re
    import subprocess
    import sys

    script = SRC.parents[1] / "scripts" / "orchestration_size.py"
    proc = subprocess.run([sys.executable, str(script), str(SRC)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    counts = dict(re.findall(r"(\S+) ([\d,]+)", proc.stdout.splitlines()[0].split(": ", 1)[1]))
    parts = {k: int(v.replace(",", "")) for k, v in counts.items()}
    assert parts.pop("raw") == sum(parts.values()) and "optional: figures" in proc.stdout
