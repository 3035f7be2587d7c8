"""`calctra-agent demo`: the whole marketplace on this machine, one job from start to payment.

It starts the reference server on a free loopback port, makes a provider and a customer
account, enrols this machine with the provider's account and runs the agent, then submits a
sample job as the customer and follows it: progress, result, payment, both balances.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from calctra_agent.cli._app import app, console, fail, user_errors
from calctra_agent.cli._options import ConfigOption, load

logger = logging.getLogger(__name__)

PROVIDER = "provider@demo.calctra.local"
CUSTOMER = "customer@demo.calctra.local"
CUSTOMER_FUNDS = 100.0
PRICE_PER_HOUR = 2.0
BUILD_IMAGES = "scripts/build-images"
"""The command that builds the demo's image locally, where no registry answers."""
LOCAL_IMAGE = "calctra-local/python3:bookworm"

SAMPLE_DATA = "\n".join(str(n * n % 97) for n in range(1, 1001)) + "\n"

SAMPLE_JOB = '''\
"""Calctra demo job: reads the dataset, estimates pi, writes the result."""
import json, os, random, time

data_dir = os.environ["CALCTRA_DATA_DIR"]
(dataset,) = os.listdir(data_dir)
with open(os.path.join(data_dir, dataset)) as f:
    numbers = [int(line) for line in f if line.strip()]
random.seed(sum(numbers))

inside = total = 0
for step in range(1, 11):
    for _ in range(50_000):
        x, y = random.random(), random.random()
        inside += x * x + y * y <= 1.0
        total += 1
    with open(os.environ["CALCTRA_PROGRESS_FILE"], "w") as f:
        f.write(str(step * 10))
    print(f"step {step}/10: pi ~ {4 * inside / total:.5f}", flush=True)
    time.sleep(0.4)

result = {
    "datasetCount": len(numbers),
    "datasetSum": sum(numbers),
    "samples": total,
    "piEstimate": round(4 * inside / total, 6),
}
with open(os.path.join(os.environ["CALCTRA_OUTPUT_DIR"], "result.json"), "w") as f:
    json.dump(result, f, indent=2)
print("wrote result.json")
'''

ImageOption = Annotated[
    str | None,
    typer.Option(help="The image the job runs in (default: the configured default image)."),
]
KeepOption = Annotated[
    bool, typer.Option("--keep", help="Keep the demo's data dir (server, agent, logs).")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=10, help="Give up after this many seconds.")
]


@app.command()
@user_errors
def demo(
    image: ImageOption = None,
    config: ConfigOption = None,
    keep: KeepOption = False,
    timeout: TimeoutOption = 300.0,
) -> None:
    """Run the whole system on this machine: server, agent and a sample job, then exit."""
    from calctra_agent.config import DEFAULT_CONFIG_PATH

    settings = load(config) if config or DEFAULT_CONFIG_PATH.exists() else None
    image = image or (settings.images.default_image if settings else None)
    image = image or _default_image()
    root = Path(tempfile.mkdtemp(prefix="calctra-demo-"))
    deadline = time.monotonic() + timeout
    try:
        _check_engine(image)
        with _reference_server(root / "server") as api_url:
            console.print(f"reference server: {api_url} (data in {root / 'server'})")
            accounts = _make_accounts(api_url)
            try:
                agent_settings = _agent_settings(api_url, root / "agent", image)
                with _running_agent(agent_settings, accounts.provider, root / "agent.log"):
                    _run_sample_job(accounts, deadline)
            finally:
                accounts.close()
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    finally:
        if keep:
            console.print(f"demo data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _default_image() -> str:
    from calctra_agent.config import ImageSettings

    return ImageSettings().default_image


# the engine and the image


def _check_engine(image: str) -> None:
    """The engine must answer and hold the image (pulled when missing)."""
    from calctra_agent.errors import RunnerError
    from calctra_agent.runner.docker import ensure_image_present

    try:
        ensure_image_present(image)
    except RunnerError as exc:
        if not str(exc).startswith(f"cannot pull image {image}"):
            raise
        raise fail(
            f"the engine has no image {image} and no registry answered for it; build one "
            f"locally with `{BUILD_IMAGES}`, then run `calctra-agent demo --image {LOCAL_IMAGE}`"
        ) from None
    console.print(f"job image: {image}")


# the server


@contextmanager
def _reference_server(data_dir: Path) -> Iterator[str]:
    """The reference server in a process of its own, on a free loopback port."""
    import httpx

    data_dir.mkdir(parents=True)
    port = _free_port()
    command = [
        sys.executable, "-m", "calctra_agent", "server", "--host", "127.0.0.1",
        "--port", str(port), "--data-dir", str(data_dir), "--dev-faucet", "--no-access-log",
    ]  # fmt: skip
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    api_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise fail(f"the reference server exited at start; see {log_path}")
            try:
                httpx.get(f"{api_url}/openapi.json", timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise fail(f"the reference server did not start; see {log_path}") from None
                time.sleep(0.1)
        yield api_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# the accounts


@dataclass(frozen=True)
class Accounts:
    """The demo's two accounts, each as a logged-in client."""

    provider: Any
    customer: Any

    def close(self) -> None:
        self.provider.close()
        self.customer.close()


def _make_accounts(api_url: str) -> Accounts:
    """A provider and a funded customer."""
    from calctra_agent.api_client import CalctraClient

    clients = []
    for role, email in (("provider", PROVIDER), ("customer", CUSTOMER)):
        password = secrets.token_urlsafe(16)
        client = CalctraClient(api_url)
        client.register(email, password, f"Demo {role}")
        client.token = client.login(email, password).token
        clients.append(client)
        console.print(f"{role} account: {email}")
    accounts = Accounts(*clients)
    accounts.customer.deposit(CUSTOMER_FUNDS)
    console.print(f"customer funded with {CUSTOMER_FUNDS:g} tokens (the server's dev faucet)")
    return accounts


# the agent


def _agent_settings(api_url: str, state_dir: Path, image: str) -> Any:
    from calctra_agent.config import AgentSettings

    return AgentSettings(
        api_url=api_url,
        state_dir=state_dir,
        work_dir=state_dir / "jobs",
        resource_name=f"demo machine ({socket.gethostname()})",
        price_per_hour=PRICE_PER_HOUR,
        heartbeat_interval_s=5,
        offer_wait_s=10,
        outbox_interval_s=0.5,
        images={"default_image": image, "allowed_images": [], "min_free_gb": 0},
        log_level="INFO",
    )


@contextmanager
def _running_agent(settings: Any, owner: Any, log_path: Path) -> Iterator[None]:
    """Enrol this machine with the provider's account, as `calctra-agent login` does, and
    run the daemon in a thread; its log goes to `log_path`."""
    from calctra_agent.cli._agent import enrol_machine
    from calctra_agent.daemon import build_agent, open_session
    from calctra_agent.runner import default_runner

    enrol_machine(settings, owner)
    handler = _log_to(log_path)
    session = open_session(settings)
    agent = None
    thread = None
    try:
        runner = default_runner(
            settings, session.client, session.credentials.resource_id, session.state.instance_id()
        )
        agent = build_agent(settings, session, runner)
        thread = threading.Thread(target=agent.run, name="agent", daemon=True)
        thread.start()
        console.print(f"agent running at {PRICE_PER_HOUR:g} tokens/hour (log: {log_path})")
        yield
    finally:
        if agent is not None and thread is not None:
            agent.stop()
            thread.join(timeout=30)
        session.client.close()
        session.state.close()
        # The offer thread's last long poll may still end after this: it logs to the file.
        handler.flush()


def _log_to(path: Path) -> logging.Handler:
    from calctra_agent._logging import configure_logging

    configure_logging("INFO")
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(root.handlers[0].formatter)
    root.handlers[:] = [handler]
    return handler


# the job


def _run_sample_job(accounts: Accounts, deadline: float) -> None:
    from calctra_agent import wire

    customer = accounts.customer
    dataset = _upload_sample_dataset(customer)
    request = wire.JobRequest.model_validate(
        {
            "name": "demo: estimate pi",
            "description": "The Calctra demo's sample job",
            "type": "custom_code",
            "code": SAMPLE_JOB,
            "requirements": {
                "minCpuCores": 1,
                "minMemoryGb": 0.5,
                "estimatedDurationHours": 0.1,
            },
            "datasets": [dataset],
            "budget": 5,
        }
    )
    job_id = customer.create_job(request).job_id
    console.print(f"job {job_id} submitted with a budget of 5 tokens")
    job = _follow(customer, job_id, deadline)
    if job.status != wire.JobStatus.COMPLETED:
        logs = customer.get_job_logs(job_id).decode(errors="replace")
        raise fail(f"the job ended {job.status.value}: {job.status_message}\n{logs[-2000:]}")
    _show_result(customer, job_id)
    _show_payment(accounts, job_id, deadline)


def _upload_sample_dataset(customer: Any) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "numbers.txt"
        path.write_text(SAMPLE_DATA)
        created = customer.upload_dataset(
            path, name="demo numbers", type="numbers", format="text/plain"
        )
    console.print(f"dataset {created.dataset_id} uploaded")
    return str(created.dataset_id)


def _follow(customer: Any, job_id: str, deadline: float) -> Any:
    """Show the job's progress until it ends; returns its last state."""
    from rich.progress import BarColumn, Progress, TextColumn

    from calctra_agent import wire

    ended = {wire.JobStatus.COMPLETED, wire.JobStatus.FAILED, wire.JobStatus.CANCELLED}
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
    )
    with Progress(*columns, console=console.get(), transient=False) as bar:
        task = bar.add_task("CREATED", total=100)
        while True:
            job = customer.get_job(job_id)
            bar.update(task, completed=job.progress, description=job.status.value)
            if job.status in ended:
                return job
            if time.monotonic() > deadline:
                raise fail(f"the job did not finish in time (status {job.status.value})")
            time.sleep(0.3)


def _show_result(customer: Any, job_id: str) -> None:
    import tarfile

    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "results.tar.gz"
        sha256 = customer.download_results(job_id, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(scratch) / "out", filter="data")
        console.print(f"result ({archive.stat().st_size} bytes, sha256 {sha256[:16]}...):")
        for path in sorted((Path(scratch) / "out").rglob("*")):
            if path.is_file():
                console.print(f"  {path.relative_to(Path(scratch) / 'out')}:")
                console.print(path.read_text(errors="replace"), markup=False)


def _show_payment(accounts: Accounts, job_id: str, deadline: float) -> None:
    """Wait for the agent's claim, then show the payment and both balances."""
    from calctra_agent import wire

    provider, customer = accounts.provider, accounts.customer
    payment = None
    while payment is None:
        for tx in provider.list_transactions(type=wire.TransactionType.PAYMENT).transactions:
            if tx.related_entity is not None and tx.related_entity.id == job_id:
                payment = tx
        if payment is None:
            if time.monotonic() > deadline:
                raise fail("the agent did not claim its payment in time")
            time.sleep(0.3)
    console.print(
        f"payment: {payment.amount:.6f} tokens to the provider (transaction {payment.id})"
    )
    console.print(f"customer balance: {customer.get_balance().balance:.6f} tokens")
    console.print(f"provider balance: {provider.get_balance().balance:.6f} tokens")
