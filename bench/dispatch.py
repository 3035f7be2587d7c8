"""Dispatch: from a customer's POST /api/jobs to the job RUNNING in its container.

Starts a reference server and the real agent (`calctra-agent run`, Docker runner) in a temp
dir, then submits trivial jobs one at a time, each after the previous one ended, so that the
agent is idle and the image present. A job is RUNNING at the server's `startedAt`, which the
agent's report sets once the container has started; the start is the bench's clock just
before the POST, on the same machine. The baseline, in the same run and interleaved with the
jobs, is the wall time of `docker run --rm --network none IMAGE true`.

    .venv/bin/python bench/dispatch.py [--jobs 20] [--image calctra-local/python3:bookworm]

Prints figures; it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import TRIVIAL_JOB, Stack, stack  # noqa: E402

TARGET_RATIO = 2.0
DEFAULT_IMAGE = "calctra-local/python3:bookworm"
_SETTLE_S = 0.5
"""Pause after a job ends, for the agent's reports, claim and clean-up to finish."""


def dispatch_ms(live: Stack) -> float:
    start = datetime.now(UTC)
    job_id = live.customer.post("/jobs", json=TRIVIAL_JOB).raise_for_status().json()["jobId"]
    status = live.wait_final(job_id, timeout_s=60)
    if status != "COMPLETED":
        raise RuntimeError(f"job {job_id} ended {status}:\n{live.agent.log()[-3000:]}")
    job = live.customer.get(f"/jobs/{job_id}").raise_for_status().json()
    time.sleep(_SETTLE_S)
    return (datetime.fromisoformat(job["startedAt"]) - start).total_seconds() * 1000


def docker_run_ms(image: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image, "true"],
        check=True,
        capture_output=True,
    )
    return (time.perf_counter() - start) * 1000


def describe(label: str, values: Sequence[float]) -> str:
    ordered = sorted(values)
    return (
        f"  {label:<44} median {statistics.median(ordered):7.1f}  "
        f"min {ordered[0]:7.1f}  max {ordered[-1]:7.1f}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs measured (after a warm-up)")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the image jobs run in")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = {
        "heartbeat_interval_s": 5,
        "offer_wait_s": 10,
        "outbox_interval_s": 1,
        "images": {"default_image": args.image, "min_free_gb": 0},
    }
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}", flush=True)
    with stack(["--no-access-log", "--heartbeat-interval", "5"], settings, docker=True) as live:
        dispatch_ms(live)
        docker_run_ms(args.image)
        agent, baseline = [], []
        for _ in range(args.jobs):
            agent.append(dispatch_ms(live))
            baseline.append(docker_run_ms(args.image))
    print(f"dispatch over {args.jobs} jobs, image {args.image}, ms")
    print(describe("POST /api/jobs -> RUNNING (agent)", agent))
    print(describe("docker run --rm IMAGE true (baseline)", baseline))
    ratio = statistics.median(agent) / statistics.median(baseline)
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"target: median ratio <= {TARGET_RATIO:.1f}: {verdict} ({ratio:.2f})")


if __name__ == "__main__":
    main()
