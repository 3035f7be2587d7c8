"""`calctra-agent login`, `run`, `status`, `jobs` and `tokens`."""

from __future__ import annotations

import socket
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from calctra_agent.cli._app import app, console, errors, fail, user_errors
from calctra_agent.cli._options import ConfigOption, JsonOption, load, print_json

tokens_app = typer.Typer(help="The owner's agent tokens.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")

EmailOption = Annotated[
    str | None, typer.Option(help="The owner's account email (asked when missing).")
]
PasswordStdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]


def _owner_client(settings: Any, email: str | None, password_stdin: bool) -> Any:
    """A client logged in as the owner, with the password asked once or read from stdin."""
    from calctra_agent.api_client import CalctraClient

    email = email or typer.prompt("email")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True)
    if not password:
        raise fail("no password given")
    client = CalctraClient(settings.api_url)
    client.token = client.login(email, password).token
    return client


@app.command()
@user_errors
def login(
    config: ConfigOption = None,
    email: EmailOption = None,
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Register this machine with your account and give the daemon its own token."""
    settings = load(config)
    with _owner_client(settings, email, password_stdin) as client:
        enrol_machine(settings, client)
    console.print("logged in; start the agent with `calctra-agent run`")


def enrol_machine(settings: Any, client: Any) -> None:
    """With the owner's logged-in `client`: register the machine unless it is, see to its
    wallet, and give the daemon its agent token."""
    from calctra_agent.daemon import State

    state = State(settings.state_dir)
    try:
        resource_id = _ensure_resource(settings, state, client)
        _ensure_wallet(settings, client)
        _issue_agent_token(state, client, resource_id)
    finally:
        state.close()


def _ensure_resource(settings: Any, state: Any, client: Any) -> str:
    from calctra_agent.config import resource_request
    from calctra_agent.daemon import remember_registration
    from calctra_agent.errors import NotFound
    from calctra_agent.probe import probe_machine

    resource_id = state.get("resource_id")
    if resource_id is not None:
        try:
            client.get_resource(resource_id)
            return str(resource_id)
        except NotFound:
            console.print(f"resource {resource_id} no longer exists; registering again")
    probe = probe_machine(settings.work_dir)
    specs = probe.capacity(settings.reserve.to_reservation()).to_specs()
    request = resource_request(settings, specs)
    resource_id = client.create_resource(request).resource_id
    state.put(resource_id=resource_id)
    remember_registration(state, request)
    console.print(f"registered this machine as resource {resource_id}")
    return str(resource_id)


def _ensure_wallet(settings: Any, client: Any) -> None:
    from calctra_agent.wallet import create_wallet, load_wallet, wallet_address

    if settings.wallet_path.exists():
        keypair = load_wallet(settings.wallet_path)
    else:
        keypair = create_wallet(settings.wallet_path)
        console.print(f"created a wallet for this machine in {settings.wallet_path}")
    address = wallet_address(keypair)
    profile = client.get_me()
    if profile.wallet_address is None:
        client.update_me(wallet_address=address)
        console.print(f"set your profile's wallet address to {address}")
    elif profile.wallet_address != address:
        errors.print(
            f"warning: your profile's wallet is {profile.wallet_address} but this machine's "
            f"is {address}; the platform will refuse its claims. Import the profile's keypair "
            "with `calctra-agent wallet import FILE`, or change the profile's walletAddress.",
            markup=False,
        )


def _issue_agent_token(state: Any, client: Any, resource_id: str) -> None:
    from calctra_agent.errors import ApiError

    old_token_id = state.get("token_id")
    created = client.create_agent_token(resource_id, name=f"calctra-agent@{socket.gethostname()}")
    state.put(agent_token=created.token, token_id=created.token_id)
    if old_token_id and old_token_id != created.token_id:
        try:
            client.revoke_agent_token(old_token_id)
        except ApiError:
            pass  # already revoked, or its resource is gone


@app.command()
@user_errors
def run(config: ConfigOption = None) -> None:
    """Run the agent in the foreground (systemd runs it this way too)."""
    from calctra_agent._logging import configure_logging
    from calctra_agent.daemon import build_agent, open_session, run_until_signalled
    from calctra_agent.runner import default_runner

    settings = load(config)
    configure_logging(settings.log_level)
    session = open_session(settings)
    try:
        runner = default_runner(
            settings, session.client, session.credentials.resource_id, session.state.instance_id()
        )
        agent = build_agent(settings, session, runner)
        run_until_signalled(agent)
    finally:
        session.client.close()
        session.state.close()


@app.command()
@user_errors
def status(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """This machine's resource, its last heartbeat, running jobs and earnings."""
    from calctra_agent.daemon import agent_token_checked, open_session

    session = open_session(load(config))
    try:
        with agent_token_checked():
            resource = session.client.get_provider_resource()
        jobs = session.state.jobs()
    finally:
        session.client.close()
        session.state.close()
    running = [job for job in jobs if job.status in ("ACCEPTED", "RUNNING", "CANCELLING")]
    earned = sum(job.payment or 0.0 for job in jobs)
    info = {
        "resourceId": resource.id,
        "name": resource.name,
        "active": resource.active,
        "lastHeartbeatAt": resource.last_heartbeat_at,
        "pricePerHour": resource.price_per_hour,
        "runningJobs": [{"jobId": j.job_id, "status": j.status, "progress": j.progress}
                        for j in running],
        "earnings": {"tokens": earned, "paidJobs": sum(1 for j in jobs if j.payment)},
    }  # fmt: skip
    if json_output:
        print_json(info)
        return
    _print_status(info)


def _print_status(info: dict[str, Any]) -> None:
    state = "[green]active[/green]" if info["active"] else "[red]inactive[/red]"
    console.print(f"resource       {info['resourceId']} ({info['name']}) {state}")
    console.print(f"last heartbeat {_ago(info['lastHeartbeatAt'])}")
    console.print(f"price          {info['pricePerHour']:g} tokens/hour")
    earnings = info["earnings"]
    console.print(f"earnings       {earnings['tokens']:g} tokens for {earnings['paidJobs']} jobs")
    if not info["runningJobs"]:
        console.print("running jobs   none")
        return
    from rich.table import Table

    table = Table("job", "status", "progress")
    for job in info["runningJobs"]:
        table.add_row(job["jobId"], job["status"], f"{job['progress']}%")
    console.print(table)


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    return f"{moment.isoformat(timespec='seconds')} ({seconds:.0f} s ago)"


@app.command()
@user_errors
def jobs(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """The jobs this machine accepted, newest last."""
    from calctra_agent.daemon import State

    settings = load(config)
    state = State(settings.state_dir)
    try:
        local = state.jobs()
    finally:
        state.close()
    rows = [
        {
            "jobId": job.job_id,
            "status": job.status,
            "progress": job.progress,
            "acceptedAt": datetime.fromtimestamp(job.accepted_at, UTC),
            "finishedAt": datetime.fromtimestamp(job.finished_at, UTC)
            if job.finished_at
            else None,
            "payment": job.payment,
            "failure": job.failure,
        }
        for job in local
    ]
    if json_output:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("job", "status", "progress", "accepted", "payment")
    for row in rows:
        payment = "" if row["payment"] is None else f"{row['payment']:g}"
        table.add_row(
            row["jobId"],
            row["status"],
            f"{row['progress']}%",
            row["acceptedAt"].isoformat(timespec="seconds"),
            payment,
        )
    console.print(table if rows else "no jobs yet")


@tokens_app.command("list")
@user_errors
def tokens_list(
    config: ConfigOption = None,
    email: EmailOption = None,
    password_stdin: PasswordStdinOption = False,
    json_output: JsonOption = False,
) -> None:
    """List your agent tokens (asks for the owner's password)."""
    with _owner_client(load(config), email, password_stdin) as client:
        tokens = client.list_agent_tokens().tokens
    if json_output:
        print_json([t.model_dump(by_alias=True, mode="json") for t in tokens])
        return
    from rich.table import Table

    table = Table("token", "resource", "name", "created", "last used", "revoked")
    for t in tokens:
        last = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never"
        table.add_row(
            t.id,
            t.resource_id,
            t.name,
            t.created_at.isoformat(timespec="seconds"),
            last,
            "yes" if t.revoked else "no",
        )
    console.print(table)


@tokens_app.command("revoke")
@user_errors
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id, from `tokens list`.")],
    config: ConfigOption = None,
    email: EmailOption = None,
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Revoke an agent token: its agent's next request is refused."""
    with _owner_client(load(config), email, password_stdin) as client:
        client.revoke_agent_token(token_id)
    console.print(f"revoked {token_id}")
