"""Timing of the machine probe, in process: what `calctra-agent probe` and each heartbeat pay.

    .venv/bin/python bench/probe.py [--runs 50]

Measures probe_machine() without the engine check, with an engine that cannot be reached (a
socket that does not exist) and with one that answers (the test suite's stand-in for the
Docker engine, on a unix socket: the same two Engine API round trips as dockerd, without
dockerd's own work), and sample_utilization(). The first call of the process is shown apart:
it pays for loading pynvml and its first look for NVML. Prints figures; it is not a test and
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from calctra_agent.probe import probe_machine, sample_utilization  # noqa: E402
from tests.probe.engine_stub import engine_stub  # noqa: E402

TARGET_MS = 50.0
ENGINE_INFO = {"ServerVersion": "28.3.0", "Runtimes": {"runc": {"path": "runc"}}}


def timed_ms(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def report(label: str, call: Callable[[], object], runs: int) -> None:
    samples = sorted(timed_ms(call) for _ in range(runs))
    median = statistics.median(samples)
    p90 = samples[int(len(samples) * 0.9) - 1]
    verdict = "ok" if median <= TARGET_MS else f"over the {TARGET_MS:.0f} ms target"
    print(f"  {label:<40} median {median:7.2f} ms  p90 {p90:7.2f} ms  ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="calctra-bench-", dir="/tmp") as tmp:
        work_dir, socket_path = Path(tmp) / "jobs", Path(tmp) / "docker.sock"
        os.environ["DOCKER_HOST"] = f"unix://{Path(tmp) / 'absent.sock'}"
        first = timed_ms(lambda: probe_machine(work_dir))
        print(f"probe, {args.runs} runs each, on {os.cpu_count()} cpus")
        print(f"  {'first call (imports pynvml)':<40} {first:7.2f} ms")
        report(
            "probe, no engine check", lambda: probe_machine(work_dir, with_engine=False), args.runs
        )
        report("probe, engine unreachable", lambda: probe_machine(work_dir), args.runs)
        os.environ["DOCKER_HOST"] = f"unix://{socket_path}"
        with engine_stub(socket_path, ENGINE_INFO):
            report(
                "probe, engine answering (stand-in)", lambda: probe_machine(work_dir), args.runs
            )
        report("sample_utilization (heartbeat)", sample_utilization, args.runs)


if __name__ == "__main__":
    main()
