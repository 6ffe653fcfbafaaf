"""A search submitted as a Ray job to a real local Ray head on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from allocsearch.model._torch import available_cores

from ..tiny import free_port, tiny_args

pytestmark = pytest.mark.slow  # a Ray cluster of its own: skipped by -m 'not slow'


def test_search_submitted_as_a_ray_job(model_dirs, cache_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    ray_cli = str(bin_dir / "ray")
    token = subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    port, dashboard = free_port(), free_port()
    cpus = 2 * available_cores() + 1  # two workers holding the default threads each, and one to spare
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--num-cpus={cpus}",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True)
    try:
        # Ray 2.60 heads authenticate by default; the client sends the head's token
        client = JobSubmissionClient(f"http://127.0.0.1:{dashboard}", headers={"Authorization": f"Bearer {token}"})
        out = tmp_path / "result.json"
        entrypoint = " ".join([sys.executable, "-m", "allocsearch.cli", "-q", "search", "--method", "evolution",
                               "--generations", "2", "--offspring", "8", "--budget", "flops=0.6", "--seed", "1",
                               "--workers", "2", "--out", str(out), *tiny_args(model_dirs, cache_dir)])
        job = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
        deadline = time.time() + 400
        while not client.get_job_status(job).is_terminal():
            assert time.time() < deadline, client.get_job_logs(job)
            time.sleep(1)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)
        result = json.loads(out.read_text())
        assert result["method"] == "evolution" and result["cost"]["flops_ratio"] <= 0.6
        assert result["evaluations"] == len(result["history"]) > 1
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True)
