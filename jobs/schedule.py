"""`loom schedule SPEC --cron "0 3 * * *"`: a KubeRay RayCronJob that runs `loom run` on the
spec at every tick, on a Ray cluster KubeRay creates for each run and deletes after it.

The spec travels as a ConfigMap mounted into the head pod (the job driver runs there in
K8sJobMode), so the rendered file is complete: `kubectl apply -f FILE`. RayCronJob needs
KubeRay >= 1.6 (alpha; enable the RayCronJob feature gate).
"""

from __future__ import annotations

import re

import yaml
from croniter import croniter

CONFIG_DIR = "/etc/loom"
SPEC_KEY = "spec.yaml"


def k8s_name(name: str) -> str:
    """A DNS-1123 name (lowercase alphanumerics and '-', at most 52 characters so that
    KubeRay's suffixed child names stay under 63)."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return (f"loom-{out}" if out else "loom")[:52].rstrip("-")


SERVICE_ACCOUNT = "loom"  # Workload Identity: bound to a GCP service account (infra/README)
GEMINI_SECRET = {"name": "loom-gemini", "key": "api-key", "optional": True}
DEADLINE_S = 6 * 3600  # a hung nightly run is stopped before the next one is due


def _container(name: str, image: str, cpu: str, memory: str, ports: bool) -> dict:
    c = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent",
         "env": [{"name": "RAY_AUTH_MODE", "value": "disabled"},
                 {"name": "GEMINI_API_KEY", "valueFrom": {"secretKeyRef": GEMINI_SECRET}}],
         "resources": {"requests": {"cpu": cpu, "memory": memory},
                       "limits": {"memory": memory}}}
    if ports:
        c["ports"] = [{"containerPort": 6379, "name": "gcs"},
                      {"containerPort": 8265, "name": "dashboard"}]
        c["volumeMounts"] = [{"name": "loom-spec", "mountPath": CONFIG_DIR, "readOnly": True}]
    return c


def render(spec_text: str, cron: str, image: str = "loom:latest", time_zone: str | None = None,
           workers: int = 1, ray_version: str = "2.60.0", deadline_s: int = DEADLINE_S
           ) -> list[dict]:
    """[ConfigMap with the spec, RayCronJob] for a validated spec's YAML text.

    Each run gets `activeDeadlineSeconds` (a hung run is stopped, not left to pile up;
    overlap is also refused by loom's per-root lock), runs as the `loom` service account,
    and reads the Gemini key from the `loom-gemini` Secret. The cluster's nodes share no
    disk, so the spec's workdir must be gs:// (BadInput otherwise)."""
    from loom.jobs.spec import load_spec
    from loom.pipelines.common import BadInput
    from loom.schemas import storage

    spec = load_spec(spec_text)
    if not storage.is_remote(spec.workdir):
        raise BadInput(f"workdir {spec.workdir}: a scheduled run's pods share no disk; "
                       "use a gs://bucket/prefix workdir")
    if not croniter.is_valid(cron) or len(cron.split()) != 5:
        raise ValueError(f"--cron {cron!r} is not a 5-field cron expression")
    name = k8s_name(spec.name)
    labels = {"app.kubernetes.io/name": "loom", "loom/spec": name}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{name}-spec", "labels": labels},
                  "data": {SPEC_KEY: spec_text}}
    cluster = {
        "rayVersion": ray_version,
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {"spec": {
                "serviceAccountName": SERVICE_ACCOUNT,
                "containers": [_container("ray-head", image, "3", "12Gi", ports=True)],
                "volumes": [{"name": "loom-spec",
                             "configMap": {"name": f"{name}-spec"}}]}}},
        "workerGroupSpecs": [{
            "groupName": "cpu", "replicas": workers, "minReplicas": workers,
            "maxReplicas": workers, "rayStartParams": {"num-cpus": "7"},
            "template": {"spec": {
                "serviceAccountName": SERVICE_ACCOUNT,
                "containers": [_container("ray-worker", image, "7", "26Gi", ports=False)]}}}],
    }
    job = {"entrypoint": f"loom --log-json run {CONFIG_DIR}/{SPEC_KEY}",
           "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 600,
           "activeDeadlineSeconds": deadline_s,
           "backoffLimit": 0, "submissionMode": "K8sJobMode", "rayClusterSpec": cluster}
    cron_job = {"apiVersion": "ray.io/v1", "kind": "RayCronJob",
                "metadata": {"name": name, "labels": labels},
                "spec": {"schedule": cron, "jobTemplate": job}}
    if time_zone:
        cron_job["spec"]["timeZone"] = time_zone
    return [config_map, cron_job]


def write_schedule(spec_path: str, cron: str, output: str | None, image: str,
                   time_zone: str | None, workers: int) -> dict:
    with open(spec_path, encoding="utf-8") as f:
        text = f.read()
    docs = render(text, cron, image, time_zone, workers)
    out = output or f"{docs[1]['metadata']['name']}-raycronjob.yaml"
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    return {"stage": "schedule", "version": None, "datasets": {"manifest": out},
            "counts": {"documents": len(docs)}, "reused": False,
            "name": docs[1]["metadata"]["name"], "cron": cron, "kinds": [d["kind"] for d in docs]}
