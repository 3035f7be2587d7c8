"""Deciding on offers: each reason to decline, and the grant of an accepted job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from calctra_agent.daemon import Accept, Decline, Terms, decide
from calctra_agent.probe import GIB, Capacity, Gpu
from calctra_agent.runner import Grant
from calctra_agent.wire import DeclineReason, JobType, Offer, Requirements

# A Wednesday, 10:00 UTC.
NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
A100 = Gpu(index=0, uuid="GPU-a100", name="NVIDIA A100", memory_total_bytes=80 * GIB)
T4 = Gpu(index=1, uuid="GPU-t4", name="Tesla T4", memory_total_bytes=16 * GIB)
MACHINE = Capacity(cpu_cores=16, memory_gb=64, storage_gb=500, gpus=(A100, T4))


def offer(
    budget: float = 100, deadline: datetime | None = None, image: str | None = None, **req: object
) -> Offer:
    requirements = {"min_cpu_cores": 2, "min_memory_gb": 4, "estimated_duration_hours": 2}
    requirements.update(req)
    return Offer(
        job_id="job_1",
        name="test",
        type=JobType.CUSTOM_CODE,
        requirements=Requirements(**requirements),
        datasets=[],
        budget=budget,
        deadline=deadline,
        created_at=NOW,
        image=image,
    )


def terms(**overrides: object) -> Terms:
    values: dict[str, object] = {
        "price_per_hour": 5.0,
        "availability": None,
        "max_concurrent_jobs": 4,
        "gpu_runtime": True,
    }
    values.update(overrides)
    return Terms(**values)  # type: ignore[arg-type]


def declined(decision: object, reason: DeclineReason) -> str:
    assert isinstance(decision, Decline), decision
    assert decision.reason == reason
    return decision.message


def test_fitting_offer_is_accepted_with_a_grant_of_what_it_asked() -> None:
    decision = decide(offer(), MACHINE, [], terms(), NOW)

    assert decision == Accept(Grant(cpu_cores=2, memory_gb=4, storage_gb=0))


def test_offer_whose_budget_does_not_cover_the_price_is_declined() -> None:
    message = declined(
        decide(offer(budget=9.99), MACHINE, [], terms(), NOW), DeclineReason.BUDGET_TOO_LOW
    )
    assert "budget is 9.99" in message


def test_budget_exactly_covering_the_price_is_accepted() -> None:
    assert isinstance(decide(offer(budget=10), MACHINE, [], terms(), NOW), Accept)


def test_offer_is_declined_when_cores_already_granted_leave_too_few() -> None:
    busy = [Grant(cpu_cores=15, memory_gb=1, storage_gb=0)]
    message = declined(
        decide(offer(), MACHINE, busy, terms(), NOW), DeclineReason.INSUFFICIENT_CAPACITY
    )
    assert "needs 2 cores, 1 are free" in message


def test_offer_is_declined_when_memory_or_storage_is_short() -> None:
    memory = decide(offer(min_memory_gb=65), MACHINE, [], terms(), NOW)
    storage = decide(offer(min_storage_gb=501), MACHINE, [], terms(), NOW)
    assert "memory" in declined(memory, DeclineReason.INSUFFICIENT_CAPACITY)
    assert "storage" in declined(storage, DeclineReason.INSUFFICIENT_CAPACITY)


def test_offer_is_declined_at_the_concurrency_limit() -> None:
    busy = [Grant(cpu_cores=1, memory_gb=1, storage_gb=0)]
    decision = decide(offer(), MACHINE, busy, terms(max_concurrent_jobs=1), NOW)
    declined(decision, DeclineReason.INSUFFICIENT_CAPACITY)


@pytest.mark.parametrize(
    ("days", "start", "end", "open_now"),
    [
        ([3], 9, 17, True),
        ([1, 2, 4, 5], 9, 17, False),  # not on Wednesdays
        ([3], 18, 8, False),  # Wednesday's window opens in the evening
        ([2], 18, 8, False),  # Tuesday's wrapped window closed at 08:00 on Wednesday
        ([2], 18, 11, True),  # ...but this one runs until 11:00 on Wednesday
    ],
)
def test_offer_outside_the_availability_window_is_declined(
    days: list[int], start: int, end: int, open_now: bool
) -> None:
    availability = {"schedule": {"days": days, "startHour": start, "endHour": end},
                    "timezone": "UTC"}  # fmt: skip
    decision = decide(offer(), MACHINE, [], terms(availability=availability), NOW)
    if open_now:
        assert isinstance(decision, Accept)
    else:
        declined(decision, DeclineReason.OUTSIDE_AVAILABILITY)


def test_availability_is_read_in_its_own_timezone() -> None:
    # 10:00 UTC is 19:00 in Tokyo: inside a 18-23 window there.
    availability = {"schedule": {"days": [3], "startHour": 18, "endHour": 23},
                    "timezone": "Asia/Tokyo"}  # fmt: skip
    assert isinstance(decide(offer(), MACHINE, [], terms(availability=availability), NOW), Accept)


def test_offer_that_cannot_finish_before_its_deadline_is_declined() -> None:
    decision = decide(offer(deadline=NOW + timedelta(hours=1)), MACHINE, [], terms(), NOW)
    declined(decision, DeclineReason.DEADLINE_TOO_SOON)


def test_gpu_job_gets_the_smallest_gpu_that_fits() -> None:
    decision = decide(offer(needs_gpu=True, min_gpu_memory_gb=12), MACHINE, [], terms(), NOW)
    assert isinstance(decision, Accept)
    assert decision.grant.gpu_uuids == ("GPU-t4",)


def test_gpu_job_gets_the_other_gpu_when_one_is_busy() -> None:
    busy = [Grant(cpu_cores=1, memory_gb=1, storage_gb=0, gpu_uuids=("GPU-t4",))]
    decision = decide(offer(needs_gpu=True), MACHINE, busy, terms(), NOW)
    assert isinstance(decision, Accept)
    assert decision.grant.gpu_uuids == ("GPU-a100",)


def test_gpu_job_is_declined_without_a_gpu_runtime() -> None:
    decision = decide(offer(needs_gpu=True), MACHINE, [], terms(gpu_runtime=False), NOW)
    assert "GPU runtime" in declined(decision, DeclineReason.GPU_UNAVAILABLE)


def test_gpu_job_is_declined_on_a_machine_without_gpus() -> None:
    machine = Capacity(cpu_cores=16, memory_gb=64, storage_gb=500)
    decision = decide(offer(needs_gpu=True), machine, [], terms(), NOW)
    declined(decision, DeclineReason.GPU_UNAVAILABLE)


def test_gpu_job_needing_more_memory_than_any_gpu_is_declined() -> None:
    decision = decide(offer(needs_gpu=True, min_gpu_memory_gb=96), MACHINE, [], terms(), NOW)
    assert "largest has 80.0 GB" in declined(decision, DeclineReason.GPU_UNAVAILABLE)


def test_gpu_job_is_declined_when_every_suitable_gpu_is_busy() -> None:
    busy = [Grant(cpu_cores=1, memory_gb=1, storage_gb=0, gpu_uuids=("GPU-a100",))]
    decision = decide(offer(needs_gpu=True, min_gpu_memory_gb=40), MACHINE, busy, terms(), NOW)
    declined(decision, DeclineReason.INSUFFICIENT_CAPACITY)


def test_offer_naming_an_image_off_the_list_is_declined() -> None:
    allowed = terms(permitted_images=frozenset({"python:3.12-slim"}))
    message = declined(
        decide(offer(image="evil/miner:1"), MACHINE, [], allowed, NOW),
        DeclineReason.IMAGE_NOT_ALLOWED,
    )
    assert "evil/miner:1" in message


def test_offer_naming_a_listed_image_or_none_is_accepted() -> None:
    allowed = terms(permitted_images=frozenset({"python:3.12-slim"}))
    assert isinstance(decide(offer(image="python:3.12-slim"), MACHINE, [], allowed, NOW), Accept)
    assert isinstance(decide(offer(), MACHINE, [], allowed, NOW), Accept)
