"""The page/limit query parameters shared by every list endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query

from calctra_agent.wire import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT


@dataclass(frozen=True)
class Page:
    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


async def page_params(  # a coroutine, so that FastAPI calls it on the event loop
    page: Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1")] = 1,
    limit: Annotated[
        int, Query(ge=1, le=1_000_000, description=f"Items per page, capped at {MAX_PAGE_LIMIT}")
    ] = DEFAULT_PAGE_LIMIT,
) -> Page:
    return Page(page=page, limit=min(limit, MAX_PAGE_LIMIT))


Pagination = Annotated[Page, Depends(page_params)]
