"""The KubeRay manifests in infra/kuberay validate against KubeRay's own CRD schemas.

The CRDs are vendored in infra/kuberay/crds (RayCluster and RayJob), so this runs with no
cluster, no network and nothing beside the clone.
"""

from __future__ import annotations

import functools
import json
import os
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = Path(os.environ.get("LOOM_KUBERAY_CRDS", REPO / "infra" / "kuberay" / "crds"))
INFRA = REPO / "infra"
MANIFESTS = sorted((INFRA / "kuberay").glob("*.y*ml"))



_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large: libyaml


@functools.lru_cache(maxsize=1)
def _crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema, for every served version of every CRD."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_Loader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                if v.get("served", True):
                    out[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = (
                        v["schema"]["openAPIV3Schema"])
    return out


def _unknown_fields(value, schema: dict, where: str) -> list[str]:
    """Paths of fields the schema does not declare, recursively (Kubernetes would prune
    them silently, so a typo there is a setting that never takes effect)."""
    errors: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return errors
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                errors += _unknown_fields(sub, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                errors += _unknown_fields(sub, extra, f"{where}.{key}")
            elif props is not None or extra is False:
                errors.append(f"{where}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            errors += _unknown_fields(sub, schema["items"], f"{where}[{i}]")
    return errors


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_manifests_exist():
    names = {p.name for p in MANIFESTS}
    assert {"raycluster.yaml", "rayjob-demo.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_crd(path):
    import jsonschema

    schemas = _crd_schemas()
    assert schemas, f"no CRDs parsed from {CRD_DIR}"
    for doc in _docs(path):
        key = (doc.get("apiVersion"), doc.get("kind"))
        assert key in schemas, f"{path.name}: {key} is not a served KubeRay CRD version"
        schema = schemas[key]
        # Types, enums and required fields (Kubernetes extensions are ignored keywords).
        validator = jsonschema.Draft7Validator(schema)
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(
            f"{path.name}: {'/'.join(map(str, e.path))}: {e.message}" for e in errors)
        # Every field, at every depth where the CRD lists properties, is a known one.
        unknown = _unknown_fields(doc["spec"], schema["properties"]["spec"], "spec")
        assert not unknown, f"{path.name}: fields not in the CRD: {unknown}"
        assert doc["metadata"]["name"]


def test_unknown_field_check_catches_typos():
    schema = _crd_schemas()[("ray.io/v1", "RayCluster")]
    doc = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    doc["spec"]["workerGroupSpecs"][0]["replica"] = 3  # typo for replicas
    doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "x"
    unknown = _unknown_fields(doc["spec"], schema["properties"]["spec"], "spec")
    assert unknown == ["spec.headGroupSpec.template.spec.containers[0].imagePullPolice",
                       "spec.workerGroupSpecs[0].replica"]


def _containers(spec: dict):
    yield from spec["headGroupSpec"]["template"]["spec"]["containers"]
    for g in spec.get("workerGroupSpecs", []):
        yield from g["template"]["spec"]["containers"]


def test_raycluster_has_cpu_and_gpu_groups():
    (doc,) = _docs(INFRA / "kuberay" / "raycluster.yaml")
    groups = {g["groupName"]: g for g in doc["spec"]["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in cpu.get("limits", {})
    assert all(c["image"] == "loom:latest" for c in _containers(doc["spec"]))


def test_rayjob_runs_the_demo():
    (doc,) = _docs(INFRA / "kuberay" / "rayjob-demo.yaml")
    assert doc["spec"]["entrypoint"] == "loom demo --workdir /data/demo"
    assert all(c["image"] == "loom:latest" for c in _containers(doc["spec"]["rayClusterSpec"]))


def test_dataflow_flex_template_metadata():
    meta = json.loads((INFRA / "dataflow" / "flex-template.json").read_text())
    assert meta["name"] and meta["description"]
    names = [p["name"] for p in meta["parameters"]]
    assert len(names) == len(set(names))
    assert {"input", "output"} <= set(names)
    for p in meta["parameters"]:
        assert {"name", "label", "helpText"} <= set(p)
        assert isinstance(p.get("isOptional", False), bool)


def test_dockerfile_installs_with_constraints():
    text = (INFRA / "Dockerfile").read_text()
    assert text.splitlines()[[i for i, line in enumerate(text.splitlines())
                              if line.startswith("FROM")][0]] == "FROM python:3.11-slim"
    assert 'pip install -c constraints.txt ".[dataflow]"' in text
    assert 'ENTRYPOINT ["loom"]' in text


def test_dataflow_extra_is_beams_own_gcp_requirements():
    """Each package of loom[dataflow] is one apache-beam[gcp] declares, with beam's range."""
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (beam,) = [d for d in meta["dependencies"] if d.startswith("apache-beam")]
    assert beam == f"apache-beam=={version('apache-beam')}"
    gcp = {}
    for line in requires("apache-beam"):
        req = Requirement(line)
        if req.marker and req.marker.evaluate({"extra": "gcp"}) and not req.marker.evaluate(
                {"extra": ""}):
            gcp[req.name] = req.specifier
    extra = [Requirement(r) for r in meta["optional-dependencies"]["dataflow"]]
    assert {r.name for r in extra} >= {"google-cloud-dataflow-client", "google-apitools"}
    for r in extra:
        assert r.name in gcp and r.specifier == gcp[r.name], (r, gcp.get(r.name))
