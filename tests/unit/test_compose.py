"""docker-compose.yml is valid, as far as `docker-compose config` can tell without a Docker engine."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.harness import ROOT


def test_compose_file_is_valid() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must validate docker-compose.yml: apt-get install -y docker-compose")
        pytest.skip("NO docker-compose BINARY: docker-compose.yml NOT VALIDATED (apt-get install -y docker-compose)")
    compose = [exe, "-f", str(ROOT / "docker-compose.yml")]
    out = subprocess.run([*compose, "config"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "capabilities:" in out.stdout and "gpu" in out.stdout  # the training worker reserves a GPU
    services = subprocess.run([*compose, "config", "--services"], capture_output=True, text=True, timeout=60)
    expected = {"redis", "postgres", "migrate", "api", "train-worker", "sample-worker", "prepare-worker"}
    assert expected <= set(services.stdout.split())
    # One training worker per machine, owning all of its GPUs; a run takes as many as it asks for.
    import yaml

    train = yaml.safe_load(out.stdout)["services"]["train-worker"]
    assert train["command"][-2:] == ["--gpus", "all"], train["command"]
    (gpus,) = train["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["count"] == "all" and "device_ids" not in gpus, gpus


def test_the_s3_profile_shares_no_disk_between_services() -> None:
    """docker-compose.s3.yml over the main file, with its profile: MinIO and its bucket, and
    every gptjobs service on the store with a /data of its own."""
    import yaml

    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must validate docker-compose.yml: apt-get install -y docker-compose")
        pytest.skip("NO docker-compose BINARY: docker-compose.s3.yml NOT VALIDATED")
    files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "docker-compose.s3.yml")]
    out = subprocess.run([exe, *files, "--profile", "s3", "config"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"minio", "minio-bucket"} <= set(services)
    ours = ["api", "train-worker", "sample-worker", "prepare-worker"]
    volumes = [services[name]["volumes"] for name in ours]
    assert len({v[0].split(":")[0] for v in volumes}) == len(ours), volumes  # none shared
    for name in ours:
        env = services[name]["environment"]
        assert env["GPTJOBS_ARTIFACTS_URL"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["GPTJOBS_REDIS_URL"]  # the main file's settings are still there
