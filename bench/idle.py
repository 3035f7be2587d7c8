"""An idle agent's footprint: memory, CPU and heartbeats over a quiet window.

Starts a reference server (heartbeat interval 10 s) and the real agent daemon
(heartbeat_interval_s 10) in a temp dir: `calctra-agent run` itself, with the Docker runner,
or with `--process-runner` the same daemon with the tests' ProcessRunner and without the
command line. It lets the agent settle for a warm-up, then
watches the agent process for `--duration` seconds with no job in sight: its RSS every second,
its CPU time at both ends of the window (the kernel's per-thread run time, in nanoseconds,
from /proc/PID/task/*/schedstat; psutil's clock-tick figure beside it), and the heartbeats and
long polls the server's access log recorded in the window. With `--after-job` the agent first
runs one job and claims its payment, as a machine that has worked since its start would have.

    .venv/bin/python bench/idle.py [--duration 60] [--warmup 5] [--after-job] [--process-runner]

Prints figures; it is not a test and asserts nothing. For comparison, a BOINC client idles at
about 16 MB and 0.1% CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import TRIVIAL_JOB, Child, Stack, stack, wait_until  # noqa: E402

RSS_TARGET_MB = 60.0
CPU_TARGET_PERCENT = 0.1
MB = 1e6
_HEARTBEAT_LINE = '"POST /v1/api/provider/heartbeat'
_OFFERS_LINE = '"GET /v1/api/provider/offers'


@dataclass(frozen=True)
class Window:
    """What the agent did in the measured window."""

    wall_s: float
    cpu_s: float
    cpu_ticks_s: float
    rss_start_mb: float
    rss_max_mb: float
    rss_end_mb: float
    uss_end_mb: float
    threads: int
    heartbeats: int
    long_polls: int


def cpu_ticks_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def cpu_s(process: psutil.Process) -> float:
    """Run time of the process's live threads, to the nanosecond."""
    total_ns = 0
    for task in Path(f"/proc/{process.pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended while being read
    return total_ns / 1e9


def count_lines(server: Child, marker: str) -> int:
    return sum(marker in line for line in server.log().splitlines())


def watch(agent: psutil.Process, server: Child, duration_s: float) -> Window:
    heartbeats, polls = count_lines(server, _HEARTBEAT_LINE), count_lines(server, _OFFERS_LINE)
    rss = [agent.memory_info().rss / MB]
    start_wall, start_cpu, start_ticks = time.monotonic(), cpu_s(agent), cpu_ticks_s(agent)
    end = start_wall + duration_s
    while (now := time.monotonic()) < end:
        time.sleep(min(1.0, end - now))
        rss.append(agent.memory_info().rss / MB)
    wall_s, used_s = time.monotonic() - start_wall, cpu_s(agent) - start_cpu
    return Window(
        wall_s=wall_s,
        cpu_s=used_s,
        cpu_ticks_s=cpu_ticks_s(agent) - start_ticks,
        rss_start_mb=rss[0],
        rss_max_mb=max(rss),
        rss_end_mb=rss[-1],
        uss_end_mb=agent.memory_full_info().uss / MB,
        threads=agent.num_threads(),
        heartbeats=count_lines(server, _HEARTBEAT_LINE) - heartbeats,
        long_polls=count_lines(server, _OFFERS_LINE) - polls,
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def run_first_job(live: Stack) -> None:
    job_id = live.customer.post("/jobs", json=TRIVIAL_JOB).raise_for_status().json()["jobId"]
    status = live.wait_final(job_id)
    if status != "COMPLETED":
        raise RuntimeError(f"job {job_id} ended {status}:\n{live.agent.log()[-3000:]}")
    wait_until(lambda: "payment claimed" in live.agent.log(), "the claim", live.agent)


def report(window: Window, after_job: bool) -> None:
    cpu_percent = window.cpu_s / window.wall_s * 100
    state = "after one job and its claim" if after_job else "since its start"
    print(f"agent idle {state}, over {window.wall_s:.1f} s (MB = 10^6 bytes)")
    print(
        f"  RSS      start {window.rss_start_mb:6.1f} MB  max {window.rss_max_mb:6.1f} MB  "
        f"end {window.rss_end_mb:6.1f} MB  (USS at end {window.uss_end_mb:.1f} MB)"
    )
    print(
        f"  CPU      {window.cpu_s:.4f} s in {window.wall_s:.1f} s = {cpu_percent:.3f}%  "
        f"(psutil, 10 ms ticks: {window.cpu_ticks_s:.2f} s)"
    )
    print(f"  server   heartbeats {window.heartbeats}  long polls {window.long_polls}")
    print(f"  threads  {window.threads}")
    rss_ok = window.rss_max_mb <= RSS_TARGET_MB
    print(f"target: RSS <= {RSS_TARGET_MB:.0f} MB: {verdict(rss_ok)}")
    print(f"target: CPU <= {CPU_TARGET_PERCENT}%: {verdict(cpu_percent <= CPU_TARGET_PERCENT)}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds watched")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after ready")
    parser.add_argument(
        "--after-job", action="store_true", help="run and claim one job before the window"
    )
    parser.add_argument(
        "--process-runner", action="store_true", help="the tests' runner, not Docker's"
    )
    parser.add_argument("--image", default="calctra-local/python3:bookworm", help="job image")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings: dict[str, object] = {"heartbeat_interval_s": 10}
    if not args.process_runner:
        settings["images"] = {"default_image": args.image, "min_free_gb": 0}
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}", flush=True)
    docker = not args.process_runner
    with stack(["--heartbeat-interval", "10"], settings, docker=docker) as live:
        if args.after_job:
            run_first_job(live)
        time.sleep(args.warmup)
        live.agent.check_alive()
        window = watch(psutil.Process(live.agent.pid), live.server, args.duration)
        live.agent.check_alive()
    report(window, args.after_job)


if __name__ == "__main__":
    main()
