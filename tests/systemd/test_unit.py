"""The shipped systemd unit: valid, of the right type, and hardened."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "calctra-agent.service"
MAX_EXPOSURE = 2.5


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_notifies_and_keeps_its_state_and_config_in_systemd_directories() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["StateDirectory"] == "calctra-agent"
    assert service["ConfigurationDirectory"] == "calctra-agent"
    assert service["User"] == "calctra-agent"
    assert "docker" in service["SupplementaryGroups"].split()
    assert int(service["WatchdogSec"].rstrip("s")) > 60, "must exceed the longest heartbeat gap"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_exposure_is_rated_at_most_2_5() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for .*?: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE
