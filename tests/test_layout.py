"""The repository's layout contract: engine-free packages stay engine-free."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENGINE_FREE = ("loom.transforms", "loom.synth", "loom.schemas", "loom.models")

_PROBE = """
import importlib, pkgutil, sys, json
names = []
for pkg_name in {pkgs!r}:
    pkg = importlib.import_module(pkg_name)
    names.append(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
        importlib.import_module(info.name)
        names.append(info.name)
leaked = sorted(m for m in ("apache_beam", "ray") if m in sys.modules)
print(json.dumps({{"modules": names, "leaked": leaked}}))
"""


@pytest.mark.parametrize("package", ENGINE_FREE)
def test_package_imports_no_engine(package, tmp_path):
    """Every module of the package imported in a fresh interpreter pulls in neither engine."""
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(pkgs=(package,))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["modules"]) > 1, out  # the walk found the package's modules
    assert out["leaked"] == [], f"{package} imports {out['leaked']}"


@pytest.mark.parametrize("path", [
    "pyproject.toml", "pipelines/beam", "pipelines/ray", "jobs", "infra", "tests", "models",
    "schemas", "transforms", "synth",
])
def test_top_level_layout(path):
    assert (ROOT / path).exists(), path


def test_installed_under_one_namespace(tmp_path):
    """Installed, loom claims one name: `loom.schemas` imports, a bare `schemas` does not."""
    probe = ("import importlib.util, json; print(json.dumps({n: importlib.util.find_spec(n) "
             "is not None for n in ('loom.schemas', 'loom.jobs.cli', 'schemas', 'jobs', "
             "'pipelines', 'transforms', 'synth', 'models')}))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    import json

    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found.pop("loom.schemas") and found.pop("loom.jobs.cli"), found
    assert not any(found.values()), f"bare top-level packages importable: {found}"
