"""Every command with a bad configuration, and the daemon before `login`: one clear line per
problem on stderr and the documented exit status, never a traceback.

Each case runs `calctra-agent run` as a real process; the other commands run in this process
through typer's runner, since they all read the settings the same way first and a process
each would cost a second apiece.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calctra_agent.cli import app
from tests.daemon.conftest import REPO, to_toml

EXIT_FAILURE, EXIT_USAGE = 1, 2

COMMANDS = [
    ("login", "--email", "pat@example.com", "--password-stdin"),
    ("run",),
    ("status",),
    ("jobs",),
    ("tokens", "list", "--email", "pat@example.com", "--password-stdin"),
    ("tokens", "revoke", "tok_1", "--email", "pat@example.com", "--password-stdin"),
    ("pricing", "show"),
    ("pricing", "set", "2.5"),
    ("pricing", "suggest"),
    ("wallet", "new"),
    ("wallet", "import", "/nonexistent/keypair.json"),
    ("wallet", "show"),
    ("probe",),
    ("config", "show"),
]


Run = Callable[[tuple[str, ...], Path], tuple[int, str]]


def run_process(command: tuple[str, ...], config: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "calctra_agent", *command, "--config", str(config)],
        input="secret\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    return done.returncode, done.stderr


def run_in_process(command: tuple[str, ...], config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*command, "--config", str(config)], input="secret\n")
    # An exit sets SystemExit here; anything else would have been a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


def every_command(config: Path) -> list[tuple[tuple[str, ...], int, str]]:
    """(command, exit status, stderr) of each command: `run` as a process, the rest here."""
    done = [(("run",), *run_process(("run",), config))]
    done += [(c, *run_in_process(c, config)) for c in COMMANDS if c != ("run",)]
    return done


def valid_config(tmp_path: Path, **changes: object) -> dict[str, object]:
    config: dict[str, object] = {
        "api_url": "http://127.0.0.1:9/v1",
        "state_dir": str(tmp_path / "state"),
        "price_per_hour": 1.5,
    }
    config.update(changes)
    return config


def test_every_command_refuses_bad_settings_with_one_line_for_each(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    availability = {"timezone": "Mars/Olympus_Mons",
                    "schedule": {"days": [1], "start_hour": 8, "end_hour": 18}}  # fmt: skip
    bad = valid_config(
        tmp_path, price_per_hour=-1.0, avalability_typo=True, availability=availability
    )
    config.write_text(to_toml(bad))

    for command, status, stderr in every_command(config):
        lines = stderr.splitlines()
        assert status == EXIT_USAGE, (command, stderr)
        assert "Traceback" not in stderr, stderr
        assert lines[0] == f"calctra-agent: invalid configuration in {config}:", command
        problems = sorted(line.strip() for line in lines[1:])
        assert len(problems) == 3, (command, lines)
        assert problems[0].startswith("availability.timezone: unknown IANA time zone")
        assert problems[1].startswith("avalability_typo: unknown setting")
        assert problems[2] == "price_per_hour: must be >= 0 (got -1.0)"
    assert not (tmp_path / "state").exists()


def test_every_command_refuses_a_config_that_is_not_toml(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('api_url = "http://127.0.0.1:9/v1"\nprice_per_hour = \n')

    for command, status, stderr in every_command(config):
        assert status == EXIT_USAGE, (command, stderr)
        assert "Traceback" not in stderr, stderr
        (problem,) = stderr.splitlines()[1:]
        assert problem.strip().startswith("not valid TOML: "), command


@pytest.mark.parametrize("run", [run_process, run_in_process])
def test_a_config_file_that_does_not_exist_is_a_usage_error(tmp_path: Path, run: Run) -> None:
    for command in [("run",), ("status",)]:
        status, stderr = run(command, tmp_path / "missing.toml")
        assert status == EXIT_USAGE, (command, stderr)
        assert "Traceback" not in stderr
        assert "missing.toml" in stderr and "no such file" in stderr


def test_run_before_login_fails_telling_to_log_in(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(to_toml(valid_config(tmp_path)))
    done = [(("run",), *run_process(("run",), config))]
    for command in [("status",), ("pricing", "set", "2"), ("pricing", "suggest")]:
        done.append((command, *run_in_process(command, config)))

    for command, status, stderr in done:
        assert status == EXIT_FAILURE, (command, stderr)
        assert "Traceback" not in stderr
        (line,) = stderr.splitlines()
        assert "not registered yet" in line and "run `calctra-agent login` first" in line
