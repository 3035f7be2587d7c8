"""The page/limit query parameters shared by every list endpoint, and query models: a list
endpoint's whole query string validated in one go, for the busiest listing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from calctra_agent.wire import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT

_PAGE_DOC = "Page number, from 1"
_LIMIT_DOC = f"Items per page, capped at {MAX_PAGE_LIMIT}"
_LARGEST = 1_000_000

QueryModel = TypeVar("QueryModel", bound=BaseModel)


@dataclass(frozen=True)
class Page:
    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


async def page_params(  # a coroutine, so that FastAPI calls it on the event loop
    page: Annotated[int, Query(ge=1, le=_LARGEST, description=_PAGE_DOC)] = 1,
    limit: Annotated[int, Query(ge=1, le=_LARGEST, description=_LIMIT_DOC)] = DEFAULT_PAGE_LIMIT,
) -> Page:
    return Page(page=page, limit=min(limit, MAX_PAGE_LIMIT))


Pagination = Annotated[Page, Depends(page_params)]


class PageQuery(BaseModel):
    """`page` and `limit` as the first fields of a query model, validated as `page_params`
    validates them."""

    page: Annotated[int, Field(ge=1, le=_LARGEST, description=_PAGE_DOC)] = 1
    limit: Annotated[int, Field(ge=1, le=_LARGEST, description=_LIMIT_DOC)] = DEFAULT_PAGE_LIMIT

    @property
    def applied(self) -> Page:
        """The page asked for, its limit capped."""
        return Page(page=self.page, limit=min(self.limit, MAX_PAGE_LIMIT))


def parse_query(model: type[QueryModel], request: Request) -> QueryModel:
    """The request's query string as `model` (unknown parameters ignored), failing with the
    errors that FastAPI would give for the same fields declared one by one with Query().

    One validation of the whole model costs a fifth of FastAPI's handling of each parameter,
    which was most of a listing's CPU time."""
    try:
        return model.model_validate(request.query_params)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in errors]
        ) from None


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI parameters of a query model's fields, as FastAPI documents a Query(): for
    an endpoint's `openapi_extra`, since FastAPI does not see what `parse_query` reads."""
    # A field of an enum's type refers to the enum's schema in the components, where the
    # endpoint's response model must have put it.
    properties = model.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )["properties"]
    parameters = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        schema = dict(properties[alias])
        if "$ref" not in schema:
            schema["title"] = alias.title()
        if "default" in schema and schema["default"] is None:
            del schema["default"]
        parameter = {"name": alias, "in": "query", "required": field.is_required(),
                     "schema": schema}  # fmt: skip
        if field.description:
            parameter["description"] = field.description
        parameters.append(parameter)
    return parameters
