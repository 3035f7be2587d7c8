"""Every command with a bad configuration, and the daemon before `login`: one clear line per
problem on stderr and the documented exit status, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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

SOME_COMMANDS = [COMMANDS[0], COMMANDS[1], COMMANDS[7], COMMANDS[13]]
"""login, run, pricing set and config show: what reads the settings is the same for all."""


def run_all(
    commands: list[tuple[str, ...]], config: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands at the same time, each with `--config config`."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "calctra_agent", *command, "--config", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for command in commands
    ]
    done = []
    for command, process in zip(commands, processes, strict=True):
        out, err = process.communicate("secret\n", timeout=60)
        done.append(subprocess.CompletedProcess(command, process.returncode, out, err))
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

    for done in run_all(COMMANDS, config):
        lines = done.stderr.splitlines()
        assert done.returncode == EXIT_USAGE, (done.args, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert lines[0] == f"calctra-agent: invalid configuration in {config}:", done.args
        problems = sorted(line.strip() for line in lines[1:])
        assert len(problems) == 3, (done.args, lines)
        assert problems[0].startswith("availability.timezone: unknown IANA time zone")
        assert problems[1].startswith("avalability_typo: unknown setting")
        assert problems[2] == "price_per_hour: must be >= 0 (got -1.0)"


def test_every_command_refuses_a_config_that_is_not_toml(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('api_url = "http://127.0.0.1:9/v1"\nprice_per_hour = \n')

    for done in run_all(SOME_COMMANDS, config):
        assert done.returncode == EXIT_USAGE, (done.args, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        (problem,) = done.stderr.splitlines()[1:]
        assert problem.strip().startswith("not valid TOML: "), done.args


def test_a_config_file_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    for done in run_all(SOME_COMMANDS, tmp_path / "missing.toml"):
        assert done.returncode == EXIT_USAGE, (done.args, done.stderr)
        assert "Traceback" not in done.stderr
        assert "missing.toml" in done.stderr and "no such file" in done.stderr


def test_run_before_login_fails_telling_to_log_in(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(to_toml(valid_config(tmp_path)))
    commands = [("run",), ("status",), ("pricing", "set", "2"), ("pricing", "suggest")]

    for done in run_all(commands, config):
        assert done.returncode == EXIT_FAILURE, (done.args, done.stderr)
        assert "Traceback" not in done.stderr
        (line,) = done.stderr.splitlines()
        assert "not registered yet" in line and "run `calctra-agent login` first" in line
