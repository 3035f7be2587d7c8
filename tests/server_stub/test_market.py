"""The market index answers GET /resources exactly as the SQL query does.

Every check compares the index's total and page ids with `sql_search`, the listing as plain
SQL, and the JSON it keeps of the resources on the page with the JSON of their rows as read
now, for many random filters and pages, after random changes: through the API, straight into
SQLite from another connection (as another process would write), and from a second server
on the same data dir.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, delete, func, insert, select, text, update

from calctra_agent.server_stub import _market
from calctra_agent.server_stub._db import Database, Resource, User, to_micro
from calctra_agent.server_stub._market import (
    KEPT_CHANGES,
    Filters,
    MarketChange,
    MarketIndex,
    ShownChange,
    page_rows,
    resource_fields,
    resource_json,
    sql_search,
)
from calctra_agent.server_stub._pagination import Page
from calctra_agent.server_stub.routes.resources import listing_json
from calctra_agent.wire import ResourcePage
from tests.conftest import Account, LiveServer, MakeServer, new_account, resource_body

KINDS = ["CPU", "GPU", "Storage"]
CORES = [1, 2, 4, 8, 16, 32, 64]
MEMORY_GB = [4.0, 16.0, 64.0, 128.0]
STORAGE_GB = [50.0, 100.0, 500.0, 2000.0]
# Few prices, so that many resources tie on price and their order falls to the id.
PRICES = [0.5, 1.0, 2.0, 2.99, 3.0, 10.0]
OWNER = "usr_marketowner00"
OTHER_OWNER = "usr_marketowner01"


# Random resources, filters and pages


def random_row(rng: random.Random, owner: str = OWNER) -> dict[str, Any]:
    """A resource as another process might write it, type and GPU drawn independently."""
    now = datetime.now(UTC)
    has_gpu = rng.random() < 0.4
    return {
        "id": f"res_{rng.getrandbits(48):012x}",
        "owner_id": owner,
        "name": "direct",
        "description": "",
        "type": rng.choice(KINDS),
        "cpu_cores": rng.choice(CORES),
        "memory_gb": rng.choice(MEMORY_GB),
        "storage_gb": rng.choice(STORAGE_GB),
        "has_gpu": has_gpu,
        "gpu_model": "NVIDIA A100" if has_gpu else None,
        "gpu_memory_gb": 80.0 if has_gpu else None,
        "price_per_hour": to_micro(rng.choice(PRICES)),
        "availability": None,
        "reputation": 0.0,
        "rating_count": 0,
        "active": rng.random() < 0.85,
        "created_at": now,
        "updated_at": now,
    }


def random_query(rng: random.Random) -> dict[str, Any]:
    """Query parameters of GET /resources, each filter present or not, at the boundaries."""
    choices: dict[str, list[Any]] = {
        "type": KINDS,
        "minCpu": [0, 1, 4, 16, 32, 64, 65],
        "minMemory": [0, 16, 64, 64.5, 128, 129],
        "minStorage": [0, 100, 500, 2000, 2001],
        "hasGpu": ["true", "false"],
        "maxPrice": [0, 0.49, 0.5, 1, 2.99, 3, 9.99, 20],
    }
    query = {name: rng.choice(values) for name, values in choices.items() if rng.random() < 0.4}
    query["page"] = rng.randint(1, 6)
    query["limit"] = rng.choice([1, 2, 3, 5, 10, 100])
    return query


def as_filters(query: dict[str, Any]) -> Filters:
    return Filters(
        type=query.get("type"),
        min_cpu=query.get("minCpu"),
        min_memory=query.get("minMemory"),
        min_storage=query.get("minStorage"),
        has_gpu={"true": True, "false": False}.get(query.get("hasGpu", "")),
        max_price=to_micro(query["maxPrice"]) if "maxPrice" in query else None,
    )


def bounds(query: dict[str, Any]) -> tuple[int, int]:
    return (query["page"] - 1) * query["limit"], query["limit"]


# Writing as another process would


def add_owner(engine: Engine, owner: str = OWNER) -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(User),
            [
                {
                    "id": owner,
                    "email": f"{owner}@example.com",
                    "name": "Owner",
                    "password_hash": "!",
                }
            ],
        )


def add_rows(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        connection.execute(insert(Resource), rows)


def resource_ids(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(select(Resource.id).order_by(Resource.id)))


def shown_change(rng: random.Random) -> dict[str, Any]:
    """New values for a column that the listing shows but does not filter on."""
    return rng.choice(
        [
            {"name": f"renamed {rng.randint(0, 99)}"},
            {"description": rng.choice(["", "now with more memory", "ünïcödé"])},
            {"reputation": round(rng.uniform(0, 5), 3)},
            {"availability": {"schedule": {"days": [1, 2], "startHour": 9, "endHour": 17},
                              "timezone": "UTC"}},
            {"availability": None},
            {"gpu_model": "NVIDIA L4", "gpu_memory_gb": 24.0},
            {"owner_id": OTHER_OWNER},
        ]
    )  # fmt: skip


def change_randomly(engine: Engine, rng: random.Random, count: int) -> None:
    """`count` random writes: inserts, deletes, listed columns changed, activation flipped,
    ids changed, a has_gpu that is neither 0 nor 1 (SQLAlchemy would refuse it, SQLite takes
    it), changes to columns that the listing shows but does not filter on, and to columns
    that it does not show."""
    ids = resource_ids(engine)
    with engine.begin() as connection:
        for _ in range(count):
            row_id = rng.choice(ids)
            where = Resource.id == row_id
            actions = ["insert", "delete", "listed", "listed", "active", "id", "odd", "shown",
                       "unshown"]  # fmt: skip
            action = rng.choice(actions)
            if action == "insert":
                row = random_row(rng)
                connection.execute(insert(Resource), [row])
                ids.append(row["id"])
            elif action == "delete" and len(ids) > 1:
                connection.execute(delete(Resource).where(where))
                ids.remove(row_id)
            elif action == "listed":
                fresh = random_row(rng)
                column = rng.choice(
                    ["type", "cpu_cores", "memory_gb", "storage_gb", "has_gpu", "price_per_hour"]
                )
                connection.execute(update(Resource).where(where).values({column: fresh[column]}))
            elif action == "active":
                connection.execute(update(Resource).where(where).values(active=~Resource.active))
            elif action == "odd":
                odd_gpu = text("UPDATE resources SET has_gpu = 2 WHERE id = :id")
                connection.execute(odd_gpu, {"id": row_id})
            elif action == "id":
                new_id = f"res_{rng.getrandbits(48):012x}"
                connection.execute(update(Resource).where(where).values(id=new_id))
                ids[ids.index(row_id)] = new_id
            elif action == "shown":
                connection.execute(update(Resource).where(where).values(shown_change(rng)))
            else:
                connection.execute(
                    update(Resource).where(where).values(last_heartbeat_at=datetime.now(UTC))
                )


# Comparing the index with SQL, in process


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'calctra.db'}")
    add_owner(db.engine)
    add_owner(db.engine, OTHER_OWNER)
    yield db
    db.dispose()


@pytest.fixture
def other_process(database: Database) -> Iterator[Engine]:
    """A second engine on the same file: its own connections, like another server process."""
    engine = create_engine(database.engine.url)
    yield engine
    engine.dispose()


def assert_index_agrees(
    database: Database, index: MarketIndex, rng: random.Random, rounds: int = 80
) -> None:
    with database.read() as connection:
        for _ in range(rounds):
            query = random_query(rng)
            filters, (offset, limit) = as_filters(query), bounds(query)
            expected = sql_search(connection, filters, offset, limit)
            assert index.search(connection, filters, offset, limit) == expected, query
            total, ids = expected
            shown = [resource_json(row) for row in page_rows(connection, ids)]
            assert index.listing(connection, filters, offset, limit) == (total, shown), query


def test_index_agrees_with_sql_on_a_fresh_market(database: Database) -> None:
    rng = random.Random(1)
    add_rows(database.engine, [random_row(rng) for _ in range(300)])

    assert_index_agrees(database, MarketIndex(), rng, rounds=300)


def test_index_agrees_with_sql_on_an_empty_market(database: Database) -> None:
    assert_index_agrees(database, MarketIndex(), random.Random(2), rounds=20)


def test_index_finds_pages_whose_matches_all_come_last(database: Database) -> None:
    rng = random.Random(13)
    cheap = [dict(random_row(rng), has_gpu=False, price_per_hour=100 + n) for n in range(400)]
    dear = [dict(random_row(rng), has_gpu=True, price_per_hour=10**9 + n) for n in range(30)]
    add_rows(database.engine, cheap + dear)
    index = MarketIndex()

    with database.read() as connection:
        for offset, limit in [(0, 1), (0, 5), (3, 4), (25, 10), (30, 5)]:
            gpu = Filters(has_gpu=True)
            expected = sql_search(connection, gpu, offset, limit)
            assert index.search(connection, gpu, offset, limit) == expected
            assert expected[0] == sum(row["active"] for row in dear)


def test_index_follows_writes_of_another_process(
    database: Database, other_process: Engine
) -> None:
    rng = random.Random(3)
    add_rows(other_process, [random_row(rng) for _ in range(200)])
    index = MarketIndex()
    assert_index_agrees(database, index, rng, rounds=10)

    for _ in range(25):
        change_randomly(other_process, rng, count=rng.randint(1, 12))
        assert_index_agrees(database, index, rng, rounds=30)


def test_changes_outside_the_listed_columns_are_not_logged(
    database: Database, other_process: Engine
) -> None:
    rng = random.Random(4)
    add_rows(other_process, [random_row(rng) for _ in range(5)])
    before = change_count(other_process)

    with other_process.begin() as connection:
        connection.execute(
            update(Resource).values(
                name="renamed",
                description="new",
                reputation=4.5,
                last_heartbeat_at=datetime.now(UTC),
                price_per_hour=Resource.price_per_hour,
            )
        )

    assert change_count(other_process) == before


def change_count(engine: Engine, log: type[MarketChange | ShownChange] = MarketChange) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(log)) or 0)


def test_changes_to_shown_columns_are_logged_apart(
    database: Database, other_process: Engine
) -> None:
    rng = random.Random(14)
    add_rows(other_process, [random_row(rng) for _ in range(5)])
    before = change_count(other_process)
    columns = ("name", "description", "reputation", "availability", "gpu_model", "owner_id")

    with other_process.begin() as connection:
        connection.execute(
            update(Resource).values(
                last_heartbeat_at=datetime.now(UTC),
                utilization={"cpuPercent": 5.0},
                **{column: getattr(Resource, column) for column in columns},
            )
        )
        assert change_count(other_process, ShownChange) == 0
        connection.execute(update(Resource).values(name="renamed", reputation=4.5))

    assert change_count(other_process, ShownChange) == 5
    assert change_count(other_process) == before


def test_index_shows_the_changes_of_another_process(
    database: Database, other_process: Engine
) -> None:
    rng = random.Random(15)
    add_rows(other_process, [random_row(rng) for _ in range(60)])
    index = MarketIndex()
    assert_index_agrees(database, index, rng, rounds=40)

    for _ in range(10):
        with other_process.begin() as connection:
            for row_id in rng.sample(resource_ids(other_process), 8):
                where = Resource.id == row_id
                connection.execute(update(Resource).where(where).values(shown_change(rng)))
        assert_index_agrees(database, index, rng, rounds=40)


def test_index_forgets_what_it_shows_when_shown_changes_it_missed_were_pruned(
    database: Database, other_process: Engine
) -> None:
    rng = random.Random(16)
    add_rows(other_process, [random_row(rng) for _ in range(30)])
    index = MarketIndex()
    with database.read() as connection:
        everything = index.listing(connection, Filters(), 0, 100)
    renamed = everything[1][0]

    with other_process.begin() as connection:
        connection.execute(update(Resource).values(description="changed"))
        # As the triggers' pruning would, had many more changes come in meanwhile.
        newest = connection.scalar(select(func.max(ShownChange.seq)))
        connection.execute(delete(ShownChange).where(ShownChange.seq < newest))

    with database.read() as connection:
        total, shown = index.listing(connection, Filters(), 0, 100)
    assert renamed not in shown
    assert all(json.loads(resource)["description"] == "changed" for resource in shown)
    assert_index_agrees(database, index, rng, rounds=40)


def test_index_renders_anew_once_it_keeps_too_much(
    database: Database, other_process: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_market, "_KEPT_JSON", 5)
    rng = random.Random(19)
    add_rows(other_process, [random_row(rng) for _ in range(80)])
    index = MarketIndex()

    for _ in range(5):
        assert_index_agrees(database, index, rng, rounds=20)
        change_randomly(other_process, rng, count=5)


def test_shown_change_log_keeps_only_the_newest_changes(
    database: Database, other_process: Engine
) -> None:
    rng = random.Random(17)
    add_rows(other_process, [random_row(rng) for _ in range(20)])
    index = MarketIndex()
    assert_index_agrees(database, index, rng, rounds=10)

    with other_process.begin() as connection:
        for number in range(KEPT_CHANGES // 20 + 5):
            connection.execute(update(Resource).values(name=f"renamed {number}"))

    assert change_count(other_process, ShownChange) == KEPT_CHANGES
    assert_index_agrees(database, index, rng, rounds=40)


def test_index_reloads_when_changes_it_missed_were_pruned(
    database: Database, other_process: Engine
) -> None:
    rng = random.Random(5)
    add_rows(other_process, [random_row(rng) for _ in range(100)])
    index = MarketIndex()
    assert_index_agrees(database, index, rng, rounds=5)
    change_randomly(other_process, rng, count=30)

    # As the triggers' pruning would, had many more changes come in meanwhile.
    with other_process.begin() as connection:
        newest = connection.scalar(select(func.max(MarketChange.seq)))
        connection.execute(delete(MarketChange).where(MarketChange.seq < newest))

    assert_index_agrees(database, index, rng, rounds=60)


def test_change_log_keeps_only_the_newest_changes(
    database: Database, other_process: Engine
) -> None:
    rng = random.Random(6)
    index = MarketIndex()
    assert_index_agrees(database, index, rng, rounds=2)

    add_rows(other_process, [random_row(rng) for _ in range(KEPT_CHANGES + 50)])

    assert change_count(other_process) == KEPT_CHANGES
    assert_index_agrees(database, index, rng, rounds=40)


def test_a_database_from_before_the_index_gets_its_change_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'calctra.db'}"
    Database(url).dispose()
    engine = create_engine(url)
    with engine.begin() as connection:
        for name in ("inserted", "deleted", "updated", "shown_updated"):
            connection.execute(text(f"DROP TRIGGER market_resource_{name}"))
        connection.execute(text("DROP TABLE market_changes"))
        connection.execute(text("DROP TABLE market_shown_changes"))
    add_owner(engine)
    add_owner(engine, OTHER_OWNER)
    rng = random.Random(7)
    add_rows(engine, [random_row(rng) for _ in range(50)])

    database = Database(url)
    try:
        index = MarketIndex()
        assert_index_agrees(database, index, rng, rounds=5)
        change_randomly(engine, rng, count=20)
        assert change_count(engine) > 0
        assert change_count(engine, ShownChange) > 0
        assert_index_agrees(database, index, rng, rounds=40)
    finally:
        database.dispose()
        engine.dispose()


def test_a_read_sees_the_database_as_of_its_first_statement(
    database: Database, other_process: Engine
) -> None:
    rng = random.Random(9)
    add_rows(other_process, [random_row(rng)])
    count = select(func.count()).select_from(Resource)

    with database.read() as connection:
        before = connection.scalar(count)
        add_rows(other_process, [random_row(rng)])
        during = connection.scalar(count)
    with database.read() as connection:
        after = connection.scalar(count)

    assert (before, during, after) == (1, 1, 2)


def test_page_rows_come_in_the_order_asked_and_skip_unknown_ids(database: Database) -> None:
    rng = random.Random(8)
    rows = [random_row(rng) for _ in range(6)]
    add_rows(database.engine, rows)
    asked = [rows[4]["id"], "res_missing", rows[1]["id"], rows[5]["id"]]

    with database.read() as connection:
        found = page_rows(connection, asked)

    assert [row.id for row in found] == [rows[4]["id"], rows[1]["id"], rows[5]["id"]]
    assert found[0].price_per_hour == rows[4]["price_per_hour"]
    assert found[0].active is rows[4]["active"]


def test_listing_json_is_what_the_wire_model_gives(database: Database) -> None:
    rng = random.Random(18)
    rows = [random_row(rng) for _ in range(4)]
    rows[0].update(name='naïve — "quoted" \\ </script>', description="\u2028 ünïcödé")
    rows[1].update(availability={"schedule": {"days": [1, 7], "startHour": 22, "endHour": 6},
                                 "timezone": "Europe/Paris"}, reputation=4.256)  # fmt: skip
    add_rows(database.engine, rows)
    page = Page(page=3, limit=7)

    with database.read() as connection:
        found = page_rows(connection, [row["id"] for row in rows])
    listed = listing_json(42, page, [resource_json(row) for row in found])

    expected = ResourcePage.model_validate(
        {"total": 42, "page": 3, "limit": 7, "resources": [resource_fields(row) for row in found]}
    )
    assert listed == expected.model_dump_json(by_alias=True).encode()
    assert listing_json(0, page, []) == b'{"total":0,"page":3,"limit":7,"resources":[]}'


# Through the API


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of this module's own: its tests write straight into its database."""
    live = LiveServer(data_dir=tmp_path_factory.mktemp("market") / "data")
    live.start()
    yield live
    live.stop()


def api_search(acct: Account, query: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    response = acct.http.get("/resources", params=query)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["total"], body["resources"]


def assert_api_agrees(
    live: LiveServer, acct: Account, rng: random.Random, rounds: int = 40
) -> None:
    """The listing's total and resources, each shown in full, are those that SQL finds."""
    engine = create_engine(f"sqlite:///{live.data_dir / 'calctra.db'}")
    try:
        with engine.connect() as connection:
            for _ in range(rounds):
                query = random_query(rng)
                total, ids = sql_search(connection, as_filters(query), *bounds(query))
                shown = [json.loads(resource_json(row)) for row in page_rows(connection, ids)]
                assert api_search(acct, query) == (total, shown), query
    finally:
        engine.dispose()


def random_body(rng: random.Random) -> dict[str, object]:
    has_gpu = rng.random() < 0.4
    specs: dict[str, object] = {
        "cpuCores": rng.choice(CORES),
        "memoryGb": rng.choice(MEMORY_GB),
        "storageGb": rng.choice(STORAGE_GB),
    }
    if has_gpu:
        specs.update(gpuModel="NVIDIA L4", gpuMemoryGb=24)
    kind = "Storage" if not has_gpu and rng.random() < 0.2 else None
    return resource_body(specs=specs, pricePerHour=rng.choice(PRICES), type=kind)


def register(acct: Account, rng: random.Random) -> str:
    response = acct.http.post("/resources", json=random_body(rng))
    assert response.status_code == 201, response.text
    return str(response.json()["resourceId"])


def test_listing_agrees_with_sql_after_changes_through_the_api(market: LiveServer) -> None:
    rng = random.Random(10)
    owner = new_account(market, "Owner Ola")
    try:
        ids = [register(owner, rng) for _ in range(30)]
        assert_api_agrees(market, owner, rng)

        for _ in range(6):
            for resource_id in rng.sample(ids, 4):
                response = owner.http.put(f"/resources/{resource_id}", json=random_body(rng))
                assert response.status_code == 200, response.text
            gone = rng.choice(ids)
            assert owner.http.delete(f"/resources/{gone}").status_code == 200
            ids.remove(gone)
            ids += [register(owner, rng) for _ in range(2)]
            assert_api_agrees(market, owner, rng, rounds=25)
    finally:
        owner.http.close()


def test_listing_agrees_with_sql_after_direct_writes_to_sqlite(market: LiveServer) -> None:
    rng = random.Random(11)
    owner = new_account(market, "Owner Oli")
    engine = create_engine(f"sqlite:///{market.data_dir / 'calctra.db'}")
    try:
        add_owner(engine, OTHER_OWNER)
        for _ in range(10):
            register(owner, rng)
        add_rows(engine, [random_row(rng, owner.user_id) for _ in range(150)])
        assert_api_agrees(market, owner, rng)

        for _ in range(8):
            change_randomly(engine, rng, count=rng.randint(1, 10))
            assert_api_agrees(market, owner, rng, rounds=25)
    finally:
        engine.dispose()
        owner.http.close()


def test_second_server_on_the_same_data_sees_the_first_ones_writes(
    make_server: MakeServer, tmp_path: Path
) -> None:
    rng = random.Random(12)
    first = make_server(data_dir=tmp_path / "shared")
    second = make_server(data_dir=tmp_path / "shared")
    writer = new_account(first, "Writer Wim")
    reader = new_account(second, "Reader Rae")
    try:
        ids = [register(writer, rng) for _ in range(12)]
        assert_api_agrees(second, reader, rng, rounds=15)

        added = register(writer, rng)
        cheapest = dict(random_body(rng), pricePerHour=0.01)
        assert writer.http.put(f"/resources/{ids[0]}", json=cheapest).status_code == 200
        assert writer.http.delete(f"/resources/{ids[1]}").status_code == 200

        listed = reader.http.get("/resources", params={"limit": 100}).json()
        listed_ids = [resource["id"] for resource in listed["resources"]]
        assert listed["total"] == 12
        assert added in listed_ids and ids[1] not in listed_ids
        assert listed_ids[0] == ids[0]
        assert listed["resources"][0]["pricePerHour"] == 0.01
        assert_api_agrees(second, reader, rng, rounds=30)
    finally:
        writer.http.close()
        reader.http.close()
