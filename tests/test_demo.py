"""`calctra-agent demo`, run as a user runs it: the whole system on this machine, with the
test engine and the locally built image."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.docker_support import PYTHON_IMAGE, docker_client, require_images

REPO = Path(__file__).resolve().parent.parent


def run_demo(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALCTRA_")}
    env["TMPDIR"] = str(tmp)
    env["COLUMNS"] = "100"
    return subprocess.run(
        [sys.executable, "-m", "calctra_agent", "demo", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=240,
    )


def test_demo_runs_a_job_from_submission_to_payment_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    client = docker_client()
    require_images(client)
    done = run_demo("--image", PYTHON_IMAGE, tmp=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in (
        f"job image: {PYTHON_IMAGE}",
        "customer funded with 100 tokens",
        "registered this machine as resource",
        "COMPLETED",
        "100%",
        "result.json",
        '"piEstimate": 3.1',
        "payment: ",
        "customer balance: 99.99",
        "provider balance: 0.00",
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"
    assert done.stderr == ""
    assert list(tmp_path.iterdir()) == [], "the demo left its data dir behind"
    leftovers = client.containers.list(all=True, filters={"label": "calctra.instance-id"})
    assert not [c for c in leftovers if "calctra-demo" in str(c.attrs["Mounts"])]
    client.close()


def test_demo_without_the_image_or_a_registry_says_in_one_line_how_to_build_it() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # The discard port on loopback: no registry answers there.
        done = run_demo("--image", "127.0.0.1:9/calctra/missing:1", tmp=Path(tmp))

    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no registry answered" in lines[0]
    assert "scripts/build-images" in lines[0]
    assert f"--image {PYTHON_IMAGE}" in lines[0]
