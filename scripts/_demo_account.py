"""The Python half of scripts/demo: picks the port, then readies the demo account.

    _demo_account.py port
        Prints $PORT if set, else 8080 if it is free, else a free port.
    _demo_account.py account BASE_URL SERVER_PID DATA_DIR
        Waits for the server, creates demo@calctra.local with 1000 tokens (or logs in to it
        when an earlier run made it) and prints how to use it.

The password is generated on the first run and kept in DATA_DIR/demo-password, so that a
later run over the same data dir can log in again.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from pathlib import Path

import httpx

EMAIL = "demo@calctra.local"
NAME = "Calctra Demo"
FUNDING_TOKENS = 1000
DEFAULT_PORT = 8080


class DemoError(Exception):
    """Something that stops the demo; its message says what to do."""


def pick_port() -> int:
    if os.environ.get("PORT"):
        if not os.environ["PORT"].isdigit() or not 0 < int(os.environ["PORT"]) < 65536:
            raise DemoError(f"PORT={os.environ['PORT']!r} is no TCP port; use 1-65535")
        return int(os.environ["PORT"])
    for port in (DEFAULT_PORT, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise DemoError("no free port on 127.0.0.1")


def wait_ready(client: httpx.Client, server_pid: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(server_pid):
            raise DemoError("the server exited at start; its log is above")
        try:
            if client.get("/v1/openapi.json").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise DemoError(f"the server did not answer within {timeout_s:.0f} s")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def demo_password(data_dir: Path) -> tuple[str, bool]:
    """The demo password, and whether it was made just now."""
    path = data_dir / "demo-password"
    if path.exists():
        return path.read_text().strip(), False
    password = secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    return password, True


def ready_account(client: httpx.Client, data_dir: Path) -> tuple[str, bool]:
    """Register the demo account, or find it made by an earlier run; returns a token and
    whether the account is new."""
    password, fresh = demo_password(data_dir)
    body = {"email": EMAIL, "password": password, "name": NAME}
    response = client.post("/v1/api/auth/register", json=body)
    created = response.status_code == 201
    if not created and response.status_code != 409:
        raise DemoError(f"cannot register {EMAIL}: {response.status_code} {response.text}")
    response = client.post("/v1/api/auth/login", json={"email": EMAIL, "password": password})
    if response.status_code == 401:
        hint = "its password file was just made" if fresh else "the password file is stale"
        raise DemoError(
            f"{EMAIL} exists but does not accept the password in {data_dir}/demo-password "
            f"({hint}); delete {data_dir} to start over"
        )
    response.raise_for_status()
    return str(response.json()["token"]), created


def fund(client: httpx.Client, token: str) -> float:
    """Deposit the demo's tokens; returns the balance."""
    headers = {"authorization": f"Bearer {token}"}
    response = client.post(
        "/v1/api/tokens/deposit", json={"amount": FUNDING_TOKENS}, headers=headers
    )
    response.raise_for_status()
    return balance(client, token)


def balance(client: httpx.Client, token: str) -> float:
    response = client.get("/v1/api/tokens/balance", headers={"authorization": f"Bearer {token}"})
    response.raise_for_status()
    return float(response.json()["balance"])


def usage(base_url: str, password: str, tokens: float, created: bool) -> str:
    api = f"{base_url}/v1/api"
    login = f'{{"email": "{EMAIL}", "password": "{password}"}}'
    account = "created with" if created else "from an earlier run, holding"
    return f"""
Calctra reference server (demo) is running; Ctrl-C stops it.

  API base URL  {api}
  API docs      {base_url}/v1/docs
  demo account  {EMAIL}  password: {password}
                ({account} {tokens:g} tokens)

Log in and keep the token:
  TOKEN=$(curl -s -X POST {api}/auth/login -H 'content-type: application/json' \\
    -d '{login}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

List the resources on offer:
  curl -s {api}/resources -H "authorization: Bearer $TOKEN"
"""


def ready_demo(base_url: str, server_pid: int, data_dir: Path) -> None:
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        wait_ready(client, server_pid)
        token, created = ready_account(client, data_dir)
        tokens = fund(client, token) if created else balance(client, token)
    password, _ = demo_password(data_dir)
    print(usage(base_url, password, tokens, created), flush=True)


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["port"]:
            print(pick_port())
        elif argv[:1] == ["account"] and len(argv) == 4:
            ready_demo(argv[1].rstrip("/"), int(argv[2]), Path(argv[3]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (DemoError, httpx.HTTPError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
