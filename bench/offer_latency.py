"""Offer latency: from a customer's POST /api/jobs to the agent's accept, on loopback.

Starts a reference server and the real agent daemon (with the tests' ProcessRunner) in a temp
dir, then submits trivial jobs one at a time, each after the previous one completed, so that
the agent is idle and its long poll waiting at every POST. The accept moment is the server's
`acceptedAt` (read back with the agent's token from GET /api/provider/jobs/{id}); the start is
the bench's clock just before the POST, on the same machine. The POST's own round trip and the
server's `createdAt` are shown too, to tell where the time goes.

    .venv/bin/python bench/offer_latency.py [--jobs 30]

Prints figures; it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import TRIVIAL_JOB, Stack, stack  # noqa: E402

TARGET_MEDIAN_MS = 150.0
_SETTLE_S = 0.3
"""Pause after a job ends, for the agent's report and claim to go out before the next POST."""
_POLL_S = 0.05


@dataclass(frozen=True)
class Sample:
    """One job's timings, in ms from just before its POST."""

    created_ms: float
    posted_ms: float
    accepted_ms: float


def ms_since(start: datetime, at: str) -> float:
    return (datetime.fromisoformat(at) - start).total_seconds() * 1000


def run_one(live: Stack) -> Sample:
    start = datetime.now(UTC)
    posted = live.customer.post("/jobs", json=TRIVIAL_JOB)
    posted_ms = (datetime.now(UTC) - start).total_seconds() * 1000
    job_id = posted.raise_for_status().json()["jobId"]
    time.sleep(_POLL_S)
    status = live.wait_final(job_id)
    if status != "COMPLETED":
        raise RuntimeError(f"job {job_id} ended {status}:\n{live.agent.log()[-3000:]}")
    held = live.agent_api.get(f"/provider/jobs/{job_id}").raise_for_status().json()
    created = live.customer.get(f"/jobs/{job_id}").raise_for_status().json()["createdAt"]
    time.sleep(_SETTLE_S)
    return Sample(ms_since(start, created), posted_ms, ms_since(start, held["acceptedAt"]))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def describe(label: str, values: Sequence[float]) -> str:
    ordered = sorted(values)
    return (
        f"  {label:<34} median {statistics.median(ordered):7.1f}  "
        f"p90 {percentile(ordered, 0.9):7.1f}  min {ordered[0]:7.1f}  max {ordered[-1]:7.1f}"
    )


def report(first: Sample, samples: list[Sample]) -> None:
    accepted = [s.accepted_ms for s in samples]
    print(f"offer latency over {len(samples)} jobs, ms (first job apart: {first.accepted_ms:.1f})")
    print(describe("POST sent -> server createdAt", [s.created_ms for s in samples]))
    print(describe("POST sent -> POST answered", [s.posted_ms for s in samples]))
    print(describe("POST answered -> acceptedAt", [s.accepted_ms - s.posted_ms for s in samples]))
    print(describe("POST sent -> acceptedAt (total)", accepted))
    median = statistics.median(accepted)
    verdict = "met" if median <= TARGET_MEDIAN_MS else "MISSED"
    print(f"target: median <= {TARGET_MEDIAN_MS:.0f} ms: {verdict} ({median:.1f} ms)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30, help="jobs measured (after one warm-up)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = {"heartbeat_interval_s": 5, "offer_wait_s": 10, "outbox_interval_s": 1}
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}", flush=True)
    with stack(["--no-access-log", "--heartbeat-interval", "5"], settings) as live:
        first = run_one(live)
        samples = [run_one(live) for _ in range(args.jobs)]
    report(first, samples)


if __name__ == "__main__":
    main()
