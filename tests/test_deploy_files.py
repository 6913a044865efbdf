"""Lint of the deployment files: what a reviewer would check by eye, asserted.

No container engine or cluster is available here, so the files are parsed and their structure
checked against what the worker actually does: LiveKit's health endpoint is on 8081 in
production, metrics on METRICS_PORT, SIGTERM drains for up to DRAIN_TIMEOUT and then the
journal flush runs, the image's user is uid 10001, secrets come only from a Secret / env file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.drain import FLUSH_TIMEOUT_S
from agent.settings import _SECRET_FIELDS, Settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "compose.yaml"
KUBERNETES = REPO / "deploy" / "kubernetes" / "worker.yaml"
LIVEKIT_HEALTH_PORT = 8081  # AgentServer's production default
SECRET_VARS = {name.upper() for name in _SECRET_FIELDS}
DEFAULT_DRAIN = Settings.model_fields["drain_timeout"].default


def _duration_s(value: str | int) -> float:
    """Compose durations: 90s, 10m, 1h30m."""
    if isinstance(value, int):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _k8s_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]


def _worker_workload() -> dict[str, Any]:
    [workload] = [
        d
        for d in _k8s_docs()
        if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"].endswith("worker")
    ]
    return workload


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


# -- Kubernetes -------------------------------------------------------------------------------


def test_kubernetes_grace_period_covers_the_drain_and_the_journal_flush() -> None:
    spec = _worker_workload()["spec"]["template"]["spec"]
    [container] = spec["containers"]
    drain = int(_env(container).get("DRAIN_TIMEOUT", {}).get("value", DEFAULT_DRAIN))
    assert spec["terminationGracePeriodSeconds"] >= drain + FLUSH_TIMEOUT_S


def test_kubernetes_probes_use_the_health_endpoint() -> None:
    """Readiness is /ready (registered with LiveKit, not draining); liveness is LiveKit's /."""
    [container] = _worker_workload()["spec"]["template"]["spec"]["containers"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    health_port = int(_env(container).get("HEALTH_PORT", {}).get("value", LIVEKIT_HEALTH_PORT))
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/")):
        http = container[probe]["httpGet"]
        port = ports.get(http["port"], http["port"])  # a named port or a number
        assert port == health_port, probe
        assert http["path"] == path, probe


def test_kubernetes_prometheus_annotations_match_the_metrics_port() -> None:
    template = _worker_workload()["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    [container] = template["spec"]["containers"]
    metrics_port = _env(container)["METRICS_PORT"]["value"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == metrics_port
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    assert int(metrics_port) in {p["containerPort"] for p in container["ports"]}


def test_kubernetes_secrets_come_only_from_a_secret() -> None:
    docs = _k8s_docs()
    [container] = _worker_workload()["spec"]["template"]["spec"]["containers"]
    refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert refs and all(name in secrets for name in refs)
    for name, entry in _env(container).items():
        if name in SECRET_VARS:
            assert "value" not in entry, f"{name} is written into the manifest"
    for secret in secrets.values():  # the example ships no real credential
        assert all(not v for v in secret.get("stringData", {}).values())
    # Everything the CRM needs comes from the Secret, not just the token.
    [keys] = [set(s.get("stringData", {})) for s in secrets.values()]
    assert {"GHL_API_KEY", "GHL_LOCATION_ID", "ENCRYPTION_KEY", "LIVEKIT_URL"} <= keys


def test_kubernetes_runs_as_the_images_non_root_user() -> None:
    pod = _worker_workload()["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == _dockerfile_uid() != 0


# -- compose ----------------------------------------------------------------------------------


def test_compose_pool_shares_redis_drains_and_keeps_secrets_in_the_env_file() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    worker, redis = services["worker"], services["redis"]
    env = worker["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert "redis" in worker["depends_on"]
    assert "image" in redis
    assert worker["env_file"]  # secrets come from the .env file
    assert not SECRET_VARS & set(env), "a secret is written into compose.yaml"
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    drain = int(env.get("DRAIN_TIMEOUT", DEFAULT_DRAIN))
    assert _duration_s(worker["stop_grace_period"]) >= drain + FLUSH_TIMEOUT_S
    assert "8081/ready" in " ".join(worker["healthcheck"]["test"])  # healthy = takes calls
    assert worker.get("restart") in ("on-failure", "always", "unless-stopped")
    assert "container_name" not in worker  # `--scale worker=N` needs no fixed name


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30
        ).returncode
    ):
        pytest.skip("the docker compose plugin is not installed here; structure checked above")
    # A copy beside an empty .env, so the check needs no secrets and builds nothing.
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "compose.yaml").write_text(COMPOSE.read_text())
    (tmp_path / ".env").write_text("")
    result = subprocess.run(
        [docker, "compose", "-f", str(tmp_path / "deploy" / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# -- Dockerfile -------------------------------------------------------------------------------


def _dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for raw in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _dockerfile_uid() -> int:
    match = re.search(r"--uid (\d+)", DOCKERFILE.read_text())
    assert match, "the Dockerfile creates no user with a fixed uid"
    return int(match.group(1))


def test_dockerfile_is_multi_stage_non_root_and_starts_the_worker() -> None:
    stages = _dockerfile_stages()
    names = [re.search(r"\bAS (\S+)", s[0], re.I) for s in stages]
    assert len(stages) >= 2 and all(names)
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    [cmd] = [line for line in final if line.upper().startswith("CMD ")]
    assert cmd.split(None, 1)[1].startswith("["), "CMD must be exec form so SIGTERM reaches python"
    assert '"agent", "start"' in cmd
    exposes = " ".join(line for line in final if line.upper().startswith("EXPOSE "))
    assert str(LIVEKIT_HEALTH_PORT) in exposes
    assert any("COPY --from=" in line for line in final)
    assert any("libportaudio2" in line for line in final)  # LiveKit's console needs it


def test_no_uv_cache_reaches_the_runtime_image() -> None:
    """HOME is /app and the runtime copies /app whole: the build stage must not cache there."""
    [build] = [s for s in _dockerfile_stages() if s[0].split()[-1] == "build"]
    text = " ".join(build)
    assert "UV_NO_CACHE=1" in text or all(
        "--no-cache" in line for line in build if " uv sync" in line or " uv run" in line
    )
    assert "COPY --from=build" in " ".join(_dockerfile_stages()[-1])


def test_dockerignore_keeps_the_local_environment_out() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".tools", "data", ".env", ".git"} <= ignored
    assert "!.env.example" in ignored
