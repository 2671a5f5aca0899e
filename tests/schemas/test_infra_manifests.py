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
    # the CPU-only torch image where no GPU is, the CUDA one on GPU nodes
    assert groups["gpu"]["template"]["spec"]["containers"][0]["image"] == "loom:gpu"
    assert groups["cpu"]["template"]["spec"]["containers"][0]["image"] == "loom:cpu"


def test_rayjob_runs_the_demo_on_gs():
    (doc,) = _docs(INFRA / "kuberay" / "rayjob-demo.yaml")
    assert doc["spec"]["entrypoint"].startswith("loom demo --workdir gs://")
    assert all(c["image"] == "loom:cpu" for c in _containers(doc["spec"]["rayClusterSpec"]))


# GKE node types the manifests name, and what a pod may request on them (allocatable).
ALLOCATABLE = {"e2-standard-4": (3.92, 13.0), "n2-standard-8": (7.91, 29.0),
               "g2-standard-8": (7.91, 29.0)}


def _quantity(q: str | int) -> float:
    """CPU cores or GiB from a Kubernetes quantity (the forms the manifests use)."""
    q = str(q)
    for suffix, scale in (("Gi", 1.0), ("Mi", 1 / 1024), ("m", 1 / 1000)):
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * scale
    return float(q)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_pods_fit_their_nodes_and_share_no_data_disk(path):
    """Requests fit the named node type's allocatable; Ray's num-cpus matches the request;
    every pod runs as the Workload Identity service account; no emptyDir holds data."""
    for doc in _docs(path):
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        for g in groups:
            pod = g["template"]["spec"]
            assert pod["serviceAccountName"] == "loom"
            assert all(v.get("emptyDir", {}).get("medium") == "Memory"
                       for v in pod.get("volumes", []) if "emptyDir" in v), g
            (c,) = pod["containers"]
            req = c["resources"]["requests"]
            cpus, mem = ALLOCATABLE[pod["nodeSelector"]["node.kubernetes.io/instance-type"]]
            assert _quantity(req["cpu"]) <= cpus and _quantity(req["memory"]) <= mem, g
            if "num-cpus" in g["rayStartParams"] and g is not spec["headGroupSpec"]:
                assert float(g["rayStartParams"]["num-cpus"]) <= _quantity(req["cpu"])


def test_image_variants_and_probe_tools():
    text = (INFRA / "Dockerfile").read_text()
    assert "ARG TORCH=cpu" in text  # the CPU-only wheel by default
    assert "download.pytorch.org/whl/${TORCH}" in text
    assert "wget" in text  # KubeRay's default probes call wget
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/loom/pipelines/beam/flex.py" in text
    assert (REPO / "pipelines" / "beam" / "flex.py").is_file()


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


def test_flex_template_parameters_are_loom_ingest_options(tmp_path):
    """The template's parameters are `loom ingest`'s options (dash for underscore), and the
    entry point reads them and passes every other flag to Beam as a pipeline option."""
    import typer
    from loom.jobs.cli import app
    from loom.pipelines.beam.flex import PARAMETERS, parse

    meta = json.loads((INFRA / "dataflow" / "flex-template.json").read_text())
    names = [p["name"] for p in meta["parameters"]]
    assert tuple(names) == PARAMETERS
    ingest = typer.main.get_command(app).commands["ingest"]
    cli = {o.lstrip("-").replace("-", "_") for p in ingest.params for o in p.opts}
    assert set(names) <= cli
    args, options = parse(["--input=gs://b/raw", "--output", "gs://b/ex", "--image_size=64",
                           "--allow_host=a.example,b.example", "--runner=DataflowRunner",
                           "--project=p", "--no_use_public_ips", "--experiments=x",
                           "--experiments=y"])
    assert (args.input, args.output, args.image_size) == ("gs://b/raw", "gs://b/ex", 64)
    assert args.allow_host == ["a.example", "b.example"]
    assert options == {"runner": "DataflowRunner", "project": "p", "no_use_public_ips": True,
                       "experiments": ["x", "y"]}
    assert parse(["--input=a", "--output=b", "--image-size=32"])[0].image_size == 32


def test_flex_entry_point_runs_an_ingest(tmp_path, capsys):
    from loom.jobs.corpus import generate_corpus
    from loom.pipelines.beam.flex import main

    generate_corpus(str(tmp_path / "c"), 2, 2, seed=0, bad_files=False)
    code = main([f"--input={tmp_path / 'c' / 'media'}", f"--output={tmp_path / 'ex'}",
                 "--image_size=32", "--runner=DirectRunner", "--direct_num_workers=1"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["stage"] == "ingest" and out["counts"]["examples"] == 4
    assert main([f"--input={tmp_path / 'missing'}", f"--output={tmp_path / 'ex'}"]) == 2
