"""`loom schedule`: the rendered RayCronJob validates against KubeRay's own CRD schema and
runs a real loom command on the spec it carries."""

from __future__ import annotations

import json
import shlex
import tomllib

import pytest
import typer
import yaml
from loom.jobs.cli import app
from loom.jobs.schedule import CONFIG_DIR, DEADLINE_S, SPEC_KEY, k8s_name
from loom.jobs.spec import load_spec
from typer.testing import CliRunner

from tests.schemas import test_infra_manifests as infra
from tests.schemas.test_infra_manifests import REPO, _unknown_fields

# The vendored CRDs (infra/kuberay/crds) include RayCronJob's.
CRON_CRDS = infra.CRD_DIR
needs_crds = pytest.mark.skipif(not (CRON_CRDS / "ray.io_raycronjobs.yaml").is_file(),
                                reason=f"RayCronJob CRD not found in {CRON_CRDS}")


def _crd_schemas() -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infra, "CRD_DIR", CRON_CRDS)
        return infra._crd_schemas()

SPEC = REPO / "jobs" / "examples" / "demo.yaml"


def _gs_spec(tmp_path):
    """The demo spec with a gs:// workdir (a scheduled run's pods share no disk)."""
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC.read_text().replace("workdir: .loom-run", "workdir: gs://b/nightly"))
    return spec


def _render(tmp_path, *extra: str) -> list[dict]:
    out = tmp_path / "cron.yaml"
    res = CliRunner().invoke(app, ["schedule", str(_gs_spec(tmp_path)), "--cron", "0 3 * * *",
                                   "--output", str(out), *extra])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["kinds"] == ["ConfigMap",
                                                                        "RayCronJob"]
    return list(yaml.safe_load_all(out.read_text()))


@needs_crds
def test_raycronjob_matches_crd(tmp_path):
    import jsonschema

    _, cron = _render(tmp_path, "--time-zone", "Europe/Paris")
    schema = _crd_schemas()[("ray.io/v1", "RayCronJob")]
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(cron))
    assert not errors, [e.message for e in errors]
    assert _unknown_fields(cron["spec"], schema["properties"]["spec"], "spec") == []
    assert cron["spec"]["schedule"] == "0 3 * * *"
    assert cron["spec"]["timeZone"] == "Europe/Paris"


def test_entrypoint_is_a_real_loom_command_on_the_carried_spec(tmp_path):
    config_map, cron = _render(tmp_path)
    argv = shlex.split(cron["spec"]["jobTemplate"]["entrypoint"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts
    commands = typer.main.get_command(app).commands
    sub = [a for a in argv[1:] if not a.startswith("-")]
    assert sub[0] in commands and sub[0] == "run"
    assert sub[1] == f"{CONFIG_DIR}/{SPEC_KEY}"
    # the ConfigMap holds the spec, loadable as is, and the head pod mounts it there
    assert load_spec(config_map["data"][SPEC_KEY]).name == load_spec(SPEC).name
    assert load_spec(config_map["data"][SPEC_KEY]).workdir == "gs://b/nightly"
    head = cron["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (mount,) = head["containers"][0]["volumeMounts"]
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    assert mount["mountPath"] == CONFIG_DIR
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_bad_cron_and_bad_spec_exit_2(tmp_path):
    res = CliRunner().invoke(app, ["schedule", str(SPEC), "--cron", "61 * * * *",
                                   "--output", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\nworkdir: w\nstages: []\n")
    res = CliRunner().invoke(app, ["schedule", str(bad), "--cron", "0 3 * * *"])
    assert res.exit_code == 2


def test_k8s_names():
    assert k8s_name("Nightly_Run") == "loom-nightly-run"
    assert len(k8s_name("x" * 80)) <= 52


def test_each_run_has_a_deadline_an_identity_and_the_key_from_a_secret(tmp_path):
    _, cron = _render(tmp_path)
    job = cron["spec"]["jobTemplate"]
    assert job["activeDeadlineSeconds"] == DEADLINE_S  # a hung nightly run is stopped
    cluster = job["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        assert pod["serviceAccountName"] == "loom"  # Workload Identity
        (c,) = pod["containers"]
        (key,) = [e for e in c["env"] if e["name"] == "GEMINI_API_KEY"]
        assert key["valueFrom"]["secretKeyRef"]["name"] == "loom-gemini" and "value" not in key
        assert not [v for v in pod.get("volumes", []) if "emptyDir" in v]  # no data on pods


def test_local_workdir_is_refused(tmp_path):
    res = CliRunner().invoke(app, ["schedule", str(SPEC), "--cron", "0 3 * * *",
                                   "--output", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2
    assert "gs://" in res.stderr and not (tmp_path / "x.yaml").exists()
