"""The agent's settings: TOML file, CALCTRA_* environment over it, and their errors."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from calctra_agent import config
from calctra_agent.config import AgentSettings, load_settings, redacted, resource_request
from calctra_agent.errors import ConfigError
from calctra_agent.probe import GIB, CpuInfo, GpuInventory, MachineProbe, MemoryInfo, StorageInfo
from calctra_agent.wire import Availability, Schedule, Specs

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "agent.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No CALCTRA_* variable of the test runner's environment, and no default file."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("CALCTRA_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "agent.toml")
    yield


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.problems


def test_defaults_apply_without_a_file_at_the_default_path() -> None:
    settings = load_settings(None)

    assert settings.api_url == "http://127.0.0.1:8080/v1"
    assert settings.state_dir == Path("/var/lib/calctra-agent")
    assert settings.work_dir == Path("/var/lib/calctra-agent/jobs")
    assert settings.wallet_path == Path("/var/lib/calctra-agent/wallet.json")
    assert settings.resource_name == socket.gethostname()
    assert settings.price_per_hour is None
    assert (settings.heartbeat_interval_s, settings.offer_wait_s) == (10, 25)
    assert settings.job_timeout_factor == 2.0
    assert settings.reserve.to_reservation().cpu_cores == 0
    assert settings.availability is None


def test_file_values_are_read_and_paths_follow_the_state_dir(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        api_url = "https://api.calctra.io/v1/"
        state_dir = "/srv/calctra"
        price_per_hour = 2
        log_level = "debug"
        [reserve]
        cpu_cores = 2
        gpus = [1, "GPU-5f3c"]
        [availability]
        timezone = "Europe/Paris"
        [availability.schedule]
        days = [5, 1, 1]
        start_hour = 18
        end_hour = 8
        """,
    )

    settings = load_settings(path)

    assert settings.api_url == "https://api.calctra.io/v1"
    assert settings.work_dir == Path("/srv/calctra/jobs")
    assert settings.wallet_path == Path("/srv/calctra/wallet.json")
    assert settings.price_per_hour == 2.0
    assert settings.log_level == "DEBUG"
    assert settings.reserve.to_reservation().gpus == (1, "GPU-5f3c")
    assert settings.availability is not None
    assert settings.availability.to_wire() == Availability(
        schedule=Schedule(days=[1, 5], start_hour=18, end_hour=8), timezone="Europe/Paris"
    )


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'price_per_hour = 2.0\nresource_name = "from-file"\n')
    monkeypatch.setenv("CALCTRA_PRICE_PER_HOUR", "3.5")
    monkeypatch.setenv("CALCTRA_API_URL", "https://api.example.com/v1")
    monkeypatch.setenv("CALCTRA_DRAIN_ON_STOP", "true")
    monkeypatch.setenv("CALCTRA_CONFIG", str(path))

    settings = load_settings(path)

    assert settings.price_per_hour == 3.5
    assert settings.api_url == "https://api.example.com/v1"
    assert settings.drain_on_stop is True
    assert settings.resource_name == "from-file"


def test_nested_environment_variable_sets_one_key_of_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[reserve]\ncpu_cores = 1\nmemory_gb = 4\n")
    monkeypatch.setenv("CALCTRA_RESERVE__CPU_CORES", "3")
    monkeypatch.setenv("CALCTRA_RESERVE__GPUS", '[0, "GPU-5f3c"]')
    monkeypatch.setenv("CALCTRA_IMAGES__ALLOWED_IMAGES", '["pytorch/pytorch:2.4.0"]')

    settings = load_settings(path)

    assert (settings.reserve.cpu_cores, settings.reserve.memory_gb) == (3, 4.0)
    assert settings.reserve.gpus == [0, "GPU-5f3c"]
    assert settings.images.permitted == {"python:3.12-slim", "pytorch/pytorch:2.4.0"}


def test_bad_values_give_one_line_per_bad_setting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        api_url = "ftp://files.example.com/v1"
        state_dir = 5
        price_per_hour = -1
        offer_wait_s = 90
        [reserve]
        gpus = [0, 1.5]
        [availability]
        timezone = "Mars/Olympus"
        [availability.schedule]
        days = [0, 3]
        start_hour = 9
        end_hour = 24
        """,
    )

    problems = problems_of(path)

    assert problems == [
        "api_url: must be an http:// or https:// URL with a host "
        "(got 'ftp://files.example.com/v1')",
        "state_dir: must be a path, as a string (got 5)",
        "price_per_hour: must be >= 0 (got -1)",
        "availability.schedule.days.0: must be >= 1 (got 0)",
        "availability.schedule.end_hour: must be <= 23 (got 24)",
        "availability.timezone: unknown IANA time zone 'Mars/Olympus'; use a name such as "
        "'Europe/Paris'",
        "reserve.gpus.1: must be a GPU index such as 0 or a UUID such as 'GPU-5f3c...' (got 1.5)",
        "offer_wait_s: must be <= 60 (got 90)",
    ]


def test_bad_environment_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALCTRA_HEARTBEAT_INTERVAL_S", "0")
    monkeypatch.setenv("CALCTRA_RESERVE__CPU_CORES", "many")

    problems = problems_of(None)

    assert problems == [
        "reserve.cpu_cores: must be a valid integer, unable to parse string as an integer "
        "(got 'many') [from CALCTRA_RESERVE__CPU_CORES]",
        "heartbeat_interval_s: must be >= 1 (got '0') [from CALCTRA_HEARTBEAT_INTERVAL_S]",
    ]


def test_list_in_the_environment_that_is_not_json_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALCTRA_RESERVE__GPUS", "0,1")

    (problem,) = problems_of(None)

    assert problem.startswith("reserve: cannot parse CALCTRA_RESERVE__GPUS;")


def test_api_url_without_its_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALCTRA_API_URL", "https://api.calctra.io")

    (problem,) = problems_of(None)

    assert problem.startswith("api_url: must end with the API version")


@pytest.mark.parametrize("address", ["ssh://builder@host", "https://host:2376", "tcp://"])
def test_engine_address_the_agent_cannot_use_is_refused(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setenv("CALCTRA_CONTAINERS__DOCKER_HOST", address)

    (problem,) = problems_of(None)

    assert problem.startswith(
        f"containers.docker_host: {address!r} is not an engine address the agent can use: "
        "give unix:///path/to/socket or tcp://host:port"
    )


@pytest.mark.parametrize("address", ["unix:///run/docker.sock", "tcp://127.0.0.1:2375"])
def test_engine_address_on_a_socket_or_plain_tcp_is_taken(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setenv("CALCTRA_CONTAINERS__DOCKER_HOST", address)

    assert load_settings(None).containers.docker_host == address


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("pricce_per_hour = 1\n", "pricce_per_hour: unknown setting"),
        ("[reserve]\ncpus = 2\n", "reserve.cpus: unknown setting"),
        ("[availability.schedule]\ndays = [1]\nstart_hour = 0\nend_hour = 0\nweeks = 2\n",
         "availability.schedule.weeks: unknown setting"),
    ],
    ids=["top-level", "in-a-table", "nested-table"],
)  # fmt: skip
def test_unknown_key_in_the_file_is_an_error(tmp_path: Path, text: str, problem: str) -> None:
    (line,) = problems_of(write(tmp_path, text))

    assert line.startswith(problem)


def test_toml_syntax_error_gives_its_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'api_url = "http://127.0.0.1:8080/v1"\nprice_per_hour = \n')

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert caught.value.source == str(path)
    assert caught.value.problems == ["not valid TOML: Invalid value (at line 2, column 18)"]


def test_missing_file_at_an_explicit_path_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert str(caught.value) == (
        f"invalid configuration in {path}: no such file; give the path of an existing agent.toml"
    )


def test_show_hides_credentials_in_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALCTRA_RPC_URL", "https://user:s3cret@rpc.example.com/?api-key=k3y&x=1")
    monkeypatch.setenv("CALCTRA_API_URL", "https://me:pw@api.calctra.io/v1")

    shown = redacted(load_settings(None))

    assert shown["rpc_url"] == "https://***@rpc.example.com/?api-key=***&x=***"
    assert shown["api_url"] == "https://***@api.calctra.io/v1"
    assert "s3cret" not in repr(shown) and "k3y" not in repr(shown) and "pw@" not in repr(shown)
    assert shown["work_dir"] == "/var/lib/calctra-agent/jobs"


def test_shipped_example_is_valid_and_names_every_setting() -> None:
    settings = load_settings(EXAMPLE)
    text = EXAMPLE.read_text(encoding="utf-8")

    assert settings.price_per_hour == 1.5
    assert settings.availability is not None
    for name, field in AgentSettings.model_fields.items():
        assert f"{name} =" in text or f"[{name}]" in text, name
        section = field.annotation
        for key in getattr(section, "model_fields", {}):
            assert f"{key} =" in text, f"{name}.{key}"


def test_registration_needs_a_price(tmp_path: Path) -> None:
    specs = Specs(cpu_cores=4, memory_gb=16.0, storage_gb=100.0)

    with pytest.raises(ConfigError) as caught:
        resource_request(load_settings(None), specs)

    assert caught.value.problems[0].startswith("price_per_hour: is not set")


def test_registration_carries_name_price_and_availability() -> None:
    settings = load_settings(EXAMPLE)
    specs = Specs(cpu_cores=4, memory_gb=16.0, storage_gb=100.0)

    request = resource_request(settings, specs)

    body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert body["name"] == settings.resource_name
    assert body["pricePerHour"] == 1.5
    assert body["availability"]["schedule"]["days"] == [1, 2, 3, 4, 5, 6, 7]


def test_reservation_from_the_settings_sets_what_is_offered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALCTRA_RESERVE__CPU_CORES", "2")
    monkeypatch.setenv("CALCTRA_RESERVE__MEMORY_GB", "8")
    probe = MachineProbe(
        cpu=CpuInfo(8, 4, "AMD EPYC", "x86_64", None),
        memory=MemoryInfo(32 * GIB, 20 * GIB),
        storage=StorageInfo(Path("/"), 500 * GIB, 200 * GIB),
        gpu=GpuInventory(),
    )

    specs = probe.to_specs(load_settings(None).reserve.to_reservation())

    assert (specs.cpu_cores, specs.memory_gb, specs.storage_gb) == (6, 24.0, 200.0)


def test_public_names_are_exported_and_sorted() -> None:
    assert config.__all__ == sorted(config.__all__)
    assert [name for name in config.__all__ if not hasattr(config, name)] == []
