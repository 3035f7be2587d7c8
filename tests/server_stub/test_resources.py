"""Resources: registering, reading, changing and removing machines, and searching the market.

The tests run on a server of this module's own, so that list totals are exact and no resource
made here is matched to another module's jobs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Account, LiveServer, new_account, resource_body

Make = Callable[..., str]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(data_dir=tmp_path_factory.mktemp("resources") / "data")
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def owner(market: LiveServer) -> Iterator[Account]:
    acct = new_account(market, "Owner Olga")
    yield acct
    acct.http.close()


@pytest.fixture(scope="module")
def stranger(market: LiveServer) -> Iterator[Account]:
    acct = new_account(market, "Stranger Stan")
    yield acct
    acct.http.close()


def create(acct: Account, **overrides: object) -> str:
    response = acct.http.post("/resources", json=resource_body(**overrides))
    assert response.status_code == 201, response.text
    resource_id: str = response.json()["resourceId"]
    return resource_id


@pytest.fixture
def cleanup(owner: Account) -> Iterator[list[str]]:
    """Ids of resources to delete after the test, so that the catalogue below stays the whole
    market."""
    made: list[str] = []
    yield made
    for resource_id in made:
        owner.http.delete(f"/resources/{resource_id}")


@pytest.fixture
def make(owner: Account, cleanup: list[str]) -> Make:
    """Register a resource as `owner`, deleted after the test."""

    def make_one(**overrides: object) -> str:
        resource_id = create(owner, **overrides)
        cleanup.append(resource_id)
        return resource_id

    return make_one


def total(acct: Account) -> int:
    response = acct.http.get("/resources")
    assert response.status_code == 200, response.text
    count: int = response.json()["total"]
    return count


def specs(cpu: int, memory: float, storage: float, **gpu: object) -> dict[str, object]:
    return {"cpuCores": cpu, "memoryGb": memory, "storageGb": storage, **gpu}


# Registering, reading, changing, removing


def test_registered_resource_reads_back_as_sent(owner: Account, cleanup: list[str]) -> None:
    body = resource_body(
        name="High-Performance Compute Node",
        description="32-core server with NVIDIA A100 GPU",
        specs=specs(32, 128, 2048, gpuModel="NVIDIA A100", gpuMemoryGb=80),
        pricePerHour=5.75,
        availability={"schedule": {"days": [1, 2, 3, 4, 5], "startHour": 18, "endHour": 8},
                      "timezone": "UTC"},
    )  # fmt: skip
    response = owner.http.post("/resources", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["message"] == "Resource registered successfully"
    resource_id = response.json()["resourceId"]
    cleanup.append(resource_id)

    detail = owner.http.get(f"/resources/{resource_id}")

    assert detail.status_code == 200, detail.text
    assert detail.json() == {
        "id": resource_id,
        "name": body["name"],
        "description": body["description"],
        "type": "GPU",
        "owner": owner.user_id,
        "specs": body["specs"],
        "pricePerHour": 5.75,
        "availability": body["availability"],
        "reputation": 0,
        "active": True,
    }


def test_resource_without_gpu_is_a_cpu_resource(owner: Account, make: Make) -> None:
    resource_id = make()

    detail = owner.http.get(f"/resources/{resource_id}").json()

    assert detail["type"] == "CPU"
    assert detail["specs"] == {"cpuCores": 8, "memoryGb": 32, "storageGb": 500,
                               "gpuModel": None, "gpuMemoryGb": None}  # fmt: skip


def test_any_signed_in_user_can_read_a_resource(stranger: Account, make: Make) -> None:
    resource_id = make(name="Public node")

    response = stranger.http.get(f"/resources/{resource_id}")

    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Public node"


def test_resources_need_a_token(market: LiveServer, owner: Account, make: Make) -> None:
    resource_id = make()
    before = owner.http.get(f"/resources/{resource_id}").json()
    count = total(owner)

    with market.client() as anonymous:
        for response in (
            anonymous.get("/resources"),
            anonymous.get(f"/resources/{resource_id}"),
            anonymous.post("/resources", json=resource_body()),
            anonymous.put(f"/resources/{resource_id}", json=resource_body(name="Taken")),
            anonymous.delete(f"/resources/{resource_id}"),
        ):
            assert_error(response, 401, "AUTHENTICATION_REQUIRED")
    assert owner.http.get(f"/resources/{resource_id}").json() == before
    assert total(owner) == count


def test_owner_updates_a_resource(owner: Account, make: Make) -> None:
    resource_id = make()
    changed = resource_body(
        name="Renamed node",
        description="now with more memory",
        specs=specs(16, 64, 1000, gpuModel="RTX 4090", gpuMemoryGb=24),
        pricePerHour=3.25,
        availability={"schedule": {"days": [6, 7], "startHour": 9, "endHour": 17},
                      "timezone": "Europe/Paris"},
    )  # fmt: skip

    response = owner.http.put(f"/resources/{resource_id}", json=changed)

    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Resource updated successfully"}
    detail = owner.http.get(f"/resources/{resource_id}").json()
    assert (detail["name"], detail["description"]) == ("Renamed node", "now with more memory")
    assert detail["specs"] == changed["specs"]
    assert detail["type"] == "GPU"
    assert detail["pricePerHour"] == 3.25
    assert detail["availability"] == changed["availability"]
    assert detail["owner"] == owner.user_id


def test_owner_deletes_a_resource_and_it_is_gone(owner: Account, make: Make) -> None:
    resource_id = make()
    before = total(owner)

    response = owner.http.delete(f"/resources/{resource_id}")

    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Resource deleted successfully"}
    error = assert_error(owner.http.get(f"/resources/{resource_id}"), 404, "RESOURCE_NOT_FOUND")
    assert error["details"] == {"resourceId": resource_id}
    assert total(owner) == before - 1
    listed = owner.http.get("/resources", params={"limit": 100}).json()["resources"]
    assert resource_id not in {r["id"] for r in listed}
    assert_error(owner.http.delete(f"/resources/{resource_id}"), 404, "RESOURCE_NOT_FOUND")


def test_non_owner_cannot_update_a_resource(owner: Account, stranger: Account, make: Make) -> None:
    resource_id = make(name="Mine")
    before = owner.http.get(f"/resources/{resource_id}").json()

    response = stranger.http.put(
        f"/resources/{resource_id}", json=resource_body(name="Stolen", pricePerHour=0)
    )

    error = assert_error(response, 403, "PERMISSION_DENIED")
    assert error["details"] == {"resourceId": resource_id}
    assert owner.http.get(f"/resources/{resource_id}").json() == before


def test_non_owner_cannot_delete_a_resource(owner: Account, stranger: Account, make: Make) -> None:
    resource_id = make(name="Mine")
    before = owner.http.get(f"/resources/{resource_id}").json()

    response = stranger.http.delete(f"/resources/{resource_id}")

    error = assert_error(response, 403, "PERMISSION_DENIED")
    assert error["details"] == {"resourceId": resource_id}
    assert owner.http.get(f"/resources/{resource_id}").json() == before


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_unknown_resource_is_not_found_with_its_id(owner: Account, method: str) -> None:
    body = resource_body() if method == "PUT" else None
    before = total(owner)

    response = owner.http.request(method, "/resources/res_doesnotexist", json=body)

    error = assert_error(response, 404, "RESOURCE_NOT_FOUND")
    assert error["details"] == {"resourceId": "res_doesnotexist"}
    assert total(owner) == before


def test_invalid_update_leaves_the_resource_unchanged(owner: Account, make: Make) -> None:
    resource_id = make()
    before = owner.http.get(f"/resources/{resource_id}").json()

    for bad in (
        resource_body(pricePerHour=-1),
        resource_body(specs=specs(0, 32, 500)),
        resource_body(type="GPU"),
        {"name": "Only a name"},
    ):
        response = owner.http.put(f"/resources/{resource_id}", json=bad)
        assert_error(response, 400, "VALIDATION_ERROR")

    assert owner.http.get(f"/resources/{resource_id}").json() == before


# Searching the market


CATALOGUE: dict[str, dict[str, object]] = {
    "small": {"specs": specs(4, 16, 100), "pricePerHour": 1.0},
    "big": {"specs": specs(64, 256, 4000), "pricePerHour": 8.0},
    "a100": {"specs": specs(32, 128, 2000, gpuModel="NVIDIA A100", gpuMemoryGb=80),
             "pricePerHour": 5.75},
    "rtx": {"specs": specs(16, 64, 1000, gpuModel="RTX 4090", gpuMemoryGb=24),
            "pricePerHour": 3.0},
    "vault": {"type": "Storage", "specs": specs(2, 8, 50_000), "pricePerHour": 0.5},
}  # fmt: skip


@pytest.fixture(scope="module")
def catalogue(owner: Account) -> dict[str, str]:
    """The whole market of this module's server: name in CATALOGUE -> resource id."""
    assert total(owner) == 0, "the catalogue must be the only thing on the market"
    return {name: create(owner, name=name, **fields) for name, fields in CATALOGUE.items()}


def search(acct: Account, **params: object) -> dict[str, Any]:
    response = acct.http.get("/resources", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def found(catalogue: dict[str, str], page: dict[str, Any]) -> set[str]:
    names = {rid: name for name, rid in catalogue.items()}
    assert page["total"] == len(page["resources"]), "the test expects a single page"
    return {names[r["id"]] for r in page["resources"]}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"small", "big", "a100", "rtx", "vault"}),
        ({"type": "CPU"}, {"small", "big"}),
        ({"type": "GPU"}, {"a100", "rtx"}),
        ({"type": "Storage"}, {"vault"}),
        ({"minCpu": 32}, {"big", "a100"}),
        ({"minCpu": 64}, {"big"}),
        ({"minCpu": 65}, set()),
        ({"minCpu": 0}, {"small", "big", "a100", "rtx", "vault"}),
        ({"minMemory": 128}, {"big", "a100"}),
        ({"minMemory": 64.5}, {"big", "a100"}),
        ({"minStorage": 2000}, {"big", "a100", "vault"}),
        ({"minStorage": 50_001}, set()),
        ({"hasGpu": "true"}, {"a100", "rtx"}),
        ({"hasGpu": "false"}, {"small", "big", "vault"}),
        ({"maxPrice": 3.0}, {"small", "rtx", "vault"}),
        ({"maxPrice": 2.99}, {"small", "vault"}),
        ({"maxPrice": 0}, set()),
        ({"hasGpu": "true", "minCpu": 20, "maxPrice": 6}, {"a100"}),
        ({"type": "CPU", "minMemory": 100}, {"big"}),
        ({"hasGpu": "false", "minStorage": 100, "maxPrice": 1}, {"small", "vault"}),
        ({"type": "GPU", "hasGpu": "false"}, set()),
    ],
)
def test_search_filters_return_exactly_the_matching_resources(
    owner: Account, catalogue: dict[str, str], params: dict[str, object], expected: set[str]
) -> None:
    page = search(owner, **params)

    assert found(catalogue, page) == expected
    assert page["total"] == len(expected)


def test_search_lists_cheapest_first_with_full_details(
    owner: Account, catalogue: dict[str, str]
) -> None:
    page = search(owner)

    prices = [r["pricePerHour"] for r in page["resources"]]
    assert prices == sorted(prices)
    for listed in page["resources"]:
        assert owner.http.get(f"/resources/{listed['id']}").json() == listed


def test_pages_cover_the_market_once_and_a_page_past_the_end_is_empty(
    owner: Account, catalogue: dict[str, str]
) -> None:
    pages = [search(owner, page=n, limit=2) for n in (1, 2, 3, 4)]

    assert [len(p["resources"]) for p in pages] == [2, 2, 1, 0]
    assert all(p["total"] == 5 and p["limit"] == 2 for p in pages)
    assert [p["page"] for p in pages] == [1, 2, 3, 4]
    ids = [r["id"] for p in pages for r in p["resources"]]
    assert sorted(ids) == sorted(catalogue.values())
    far = search(owner, page=1_000_000, limit=100)
    assert (far["total"], far["resources"], far["page"]) == (5, [], 1_000_000)


def test_default_page_is_the_first_ten(owner: Account, catalogue: dict[str, str]) -> None:
    page = search(owner)

    assert (page["page"], page["limit"], page["total"]) == (1, 10, 5)


@pytest.mark.parametrize("asked", [101, 1000, 1_000_000])
def test_page_limit_is_capped_at_100(
    owner: Account, catalogue: dict[str, str], asked: int
) -> None:
    page = search(owner, limit=asked)

    assert page["limit"] == 100
    assert page["total"] == 5


@pytest.mark.parametrize(
    "params",
    [
        {"page": 0}, {"page": -1}, {"page": "abc"}, {"page": 1.5}, {"page": 10**7},
        {"limit": 0}, {"limit": -1}, {"limit": "ten"}, {"limit": 10**7},
        {"type": "gpu"}, {"type": "Quantum"}, {"minCpu": -1}, {"minCpu": "many"},
        {"minCpu": 2.5}, {"minMemory": -0.5}, {"minMemory": "nan"}, {"minMemory": "inf"},
        {"minStorage": -1}, {"minStorage": 1e300}, {"hasGpu": "maybe"}, {"maxPrice": -1},
        {"maxPrice": "cheap"}, {"maxPrice": "NaN"},
    ],
)  # fmt: skip
def test_invalid_search_parameter_is_a_validation_error(
    owner: Account, catalogue: dict[str, str], params: dict[str, object]
) -> None:
    response = owner.http.get("/resources", params=params)

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert [f["field"] for f in error["details"]["fields"]] == list(params)


# Validation of a registration


def availability(
    days: object = None, start: object = 0, end: object = 0, tz: object = "UTC"
) -> dict[str, object]:
    return {
        "schedule": {"days": [1, 2, 3, 4, 5] if days is None else days,
                     "startHour": start, "endHour": end},
        "timezone": tz,
    }  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        availability(days=[0]), availability(days=[8]), availability(days=[1, 9]),
        availability(days=[]), availability(days=[-1]), availability(days=["1"]),
        availability(days=1), availability(days=[1, 2, 3, 4, 5, 6, 7, 1]),
        availability(start=24), availability(end=24), availability(start=-1),
        availability(end=-1), availability(start=7.5), availability(start="8"),
        availability(tz="Mars/Olympus_Mons"), availability(tz="../../etc/passwd"),
        availability(tz=""), availability(tz="GMT+25"), availability(tz=3),
        {"schedule": {"days": [1], "startHour": 0}, "timezone": "UTC"},
        {"days": [1], "startHour": 0, "endHour": 0},
        "always",
    ],
)  # fmt: skip
def test_invalid_availability_is_refused_and_nothing_is_created(
    owner: Account, value: object
) -> None:
    before = total(owner)

    response = owner.http.post("/resources", json=resource_body(availability=value))

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert all(f["field"].startswith("availability") for f in error["details"]["fields"])
    assert total(owner) == before


@pytest.mark.parametrize(
    ("value", "stored_days"),
    [
        (availability(days=[1, 2, 3, 4, 5], start=18, end=8), [1, 2, 3, 4, 5]),
        (availability(days=[7], start=23, end=0), [7]),
        (availability(days=[5, 1, 1, 3], start=0, end=23), [1, 3, 5]),
        (availability(tz="Europe/Paris"), [1, 2, 3, 4, 5]),
        (availability(tz="America/Argentina/Buenos_Aires"), [1, 2, 3, 4, 5]),
        (availability(tz="Asia/Kolkata"), [1, 2, 3, 4, 5]),
    ],
)
def test_valid_availability_is_accepted_and_stored(
    owner: Account, make: Make, value: dict[str, Any], stored_days: list[int]
) -> None:
    resource_id = make(availability=value)

    stored = owner.http.get(f"/resources/{resource_id}").json()["availability"]

    assert stored["schedule"]["startHour"] == value["schedule"]["startHour"]
    assert stored["schedule"]["endHour"] == value["schedule"]["endHour"]
    assert stored["schedule"]["days"] == stored_days
    assert stored["timezone"] == value["timezone"]


def test_resource_without_availability_is_always_available(owner: Account, make: Make) -> None:
    resource_id = make(availability=None)

    assert owner.http.get(f"/resources/{resource_id}").json()["availability"] is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"type": "GPU"}, "specs.gpuModel"),
        ({"specs": specs(8, 32, 500, gpuMemoryGb=24)}, "specs.gpuModel"),
        ({"type": "GPU", "specs": specs(8, 32, 500, gpuModel="")}, "specs.gpuModel"),
    ],
)
def test_gpu_resource_needs_a_gpu_model(
    owner: Account, overrides: dict[str, object], field: str
) -> None:
    before = total(owner)

    response = owner.http.post("/resources", json=resource_body(**overrides))

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert field in json.dumps(error["details"])
    assert total(owner) == before


@pytest.mark.parametrize(
    "overrides",
    [
        {"specs": specs(10**30, 32, 500)}, {"specs": specs(0, 32, 500)},
        {"specs": specs(-8, 32, 500)}, {"specs": specs(4097, 32, 500)},
        {"specs": specs(8.5, 32, 500)}, {"specs": specs("8", 32, 500)},
        {"specs": specs(True, 32, 500)},
        {"specs": specs(8, -1, 500)}, {"specs": specs(8, 1e308, 500)},
        {"specs": specs(8, "NaN", 500)}, {"specs": specs(8, 32, "Infinity")},
        {"specs": specs(8, 32, -500)}, {"specs": specs(8, 32, 500, gpuModel="X", gpuMemoryGb=-1)},
        {"specs": {"cpuCores": 8, "memoryGb": 32}},
        {"specs": {**specs(8, 32, 500), "tpuCount": 4}},
        {"pricePerHour": 1e308}, {"pricePerHour": 10**30}, {"pricePerHour": -0.01},
        {"pricePerHour": "NaN"}, {"pricePerHour": "5"}, {"pricePerHour": None},
        {"type": "Quantum"}, {"type": "gpu"}, {"type": 1},
        {"name": ""}, {"name": "n" * 201}, {"name": None}, {"description": "d" * 5001},
        {"owner": "usr_someoneelse"}, {"active": False}, {"reputation": 5},
    ],
)  # fmt: skip
def test_invalid_resource_is_refused_and_nothing_is_created(
    owner: Account, overrides: dict[str, object]
) -> None:
    before = total(owner)

    response = owner.http.post("/resources", json=resource_body(**overrides))

    assert_error(response, 400, "VALIDATION_ERROR")
    assert total(owner) == before


@pytest.mark.parametrize(
    "raw",
    [
        '"cpuCores": NaN, "memoryGb": 32, "storageGb": 500',
        '"cpuCores": 8, "memoryGb": Infinity, "storageGb": 500',
        '"cpuCores": 8, "memoryGb": 32, "storageGb": -Infinity',
        '"cpuCores": 1e400, "memoryGb": 32, "storageGb": 500',
        '"cpuCores": 8, "memoryGb": 1e400, "storageGb": 500',
    ],
)
def test_non_finite_json_numbers_are_refused(owner: Account, raw: str) -> None:
    before = total(owner)
    body = '{"name": "n", "specs": {' + raw + '}, "pricePerHour": 1}'

    response = owner.http.post(
        "/resources", content=body, headers={"content-type": "application/json"}
    )

    assert_error(response, 400, "VALIDATION_ERROR")
    assert total(owner) == before
