"""Logs: a job printing 200 MB to stdout, through the agent, against plain `docker run`.

Starts a reference server and the real agent (`calctra-agent run`, Docker runner) in a temp
dir. The baseline is the same container run by `docker run --rm --network none IMAGE ...`
with its output discarded; then the same code runs as a job, while the agent's RSS is sampled
every 50 ms. The job's wall time is the platform's `startedAt` to `completedAt` (container
start to the COMPLETED report, the agent's own work on the log included). Runs alternate,
baseline first.

    .venv/bin/python bench/logs.py [--mb 200] [--runs 3] [--image calctra-local/python3:bookworm]

Prints figures; it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import TRIVIAL_JOB, Stack, stack  # noqa: E402

TARGET_RSS_GROWTH_MB = 30.0
TARGET_WALL_RATIO = 1.3
DEFAULT_IMAGE = "calctra-local/python3:bookworm"
_LINE = "x" * 99
"""With its newline, 100 bytes a line."""


def job_code(mb: int) -> str:
    lines = mb * 1024 * 1024 // 100
    return (
        "import sys\n"
        f"line = {_LINE!r} + '\\n'\n"
        "block = line * 1000\n"
        f"for _ in range({lines // 1000}):\n"
        "    sys.stdout.write(block)\n"
        "sys.stdout.flush()\n"
    )


class RssSampler:
    """The peak RSS of a process, sampled in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)


def baseline_s(image: str, code: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image, "python3", "-c", code],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def job_s(live: Stack, code: str) -> tuple[float, int, int]:
    """The job's wall time, and the agent's RSS before it and at its peak."""
    before = psutil.Process(live.agent.pid).memory_info().rss
    body = {**TRIVIAL_JOB, "code": code}
    with RssSampler(live.agent.pid) as rss:
        job_id = live.customer.post("/jobs", json=body).raise_for_status().json()["jobId"]
        status = live.wait_final(job_id, timeout_s=600)
    if status != "COMPLETED":
        raise RuntimeError(f"job {job_id} ended {status}:\n{live.agent.log()[-3000:]}")
    job = live.customer.get(f"/jobs/{job_id}").raise_for_status().json()
    wall = datetime.fromisoformat(job["completedAt"]) - datetime.fromisoformat(job["startedAt"])
    return wall.total_seconds(), before, rss.peak


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="MB the job prints")
    parser.add_argument("--runs", type=int, default=3, help="runs of each")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the image jobs run in")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    code = job_code(args.mb)
    settings = {
        "heartbeat_interval_s": 10,
        "offer_wait_s": 10,
        "outbox_interval_s": 1,
        "images": {"default_image": args.image, "min_free_gb": 0},
    }
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}", flush=True)
    baselines, walls, growths = [], [], []
    with stack(["--no-access-log", "--heartbeat-interval", "10"], settings, docker=True) as live:
        for _ in range(args.runs):
            baselines.append(baseline_s(args.image, code))
            wall, before, peak = job_s(live, code)
            walls.append(wall)
            growths.append((peak - before) / 2**20)
            time.sleep(1.0)
    print(f"logs: a job printing {args.mb} MB to stdout, {args.runs} runs each")
    print(
        f"  docker run, output discarded (baseline)  median {statistics.median(baselines):6.2f} s"
    )
    print(f"  job through the agent, start to COMPLETED median {statistics.median(walls):6.2f} s")
    print(
        f"  agent RSS growth, peak minus before       max {max(growths):6.1f} MB "
        f"(median {statistics.median(growths):.1f})"
    )
    ratio = statistics.median(walls) / statistics.median(baselines)
    wall_verdict = "met" if ratio <= TARGET_WALL_RATIO else "MISSED"
    rss_verdict = "met" if max(growths) <= TARGET_RSS_GROWTH_MB else "MISSED"
    print(f"target: wall ratio <= {TARGET_WALL_RATIO}: {wall_verdict} ({ratio:.2f})")
    print(
        f"target: RSS growth <= {TARGET_RSS_GROWTH_MB:.0f} MB: {rss_verdict} "
        f"({max(growths):.1f} MB)"
    )


if __name__ == "__main__":
    main()
