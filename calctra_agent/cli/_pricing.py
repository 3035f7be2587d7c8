"""`calctra-agent pricing`: show, set and suggest this machine's price per hour."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from calctra_agent.cli._app import app, console, fail, user_errors
from calctra_agent.cli._options import ConfigOption, JsonOption, load, print_json

pricing_app = typer.Typer(help="This machine's price per hour.", no_args_is_help=True)
app.add_typer(pricing_app, name="pricing")

_SUGGEST_PAGES = 10
"""At most this many pages of 100 comparable resources are compared."""


@pricing_app.command("show")
@user_errors
def pricing_show(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """The price the agent offers, and where it comes from."""
    from calctra_agent.daemon import PRICE_OVERRIDE_KEY, State

    settings = load(config)
    state = State(settings.state_dir)
    try:
        override = state.get(PRICE_OVERRIDE_KEY)
    finally:
        state.close()
    price = float(override) if override is not None else settings.price_per_hour
    source = "pricing set" if override is not None else "configuration"
    if json_output:
        print_json({"pricePerHour": price, "source": source})
    elif price is None:
        console.print(
            "no price yet: set price_per_hour in the configuration or run "
            "`calctra-agent pricing set PRICE`"
        )
    else:
        console.print(f"{price:g} tokens/hour (from {source})")


@pricing_app.command("set")
@user_errors
def pricing_set(
    price: Annotated[float, typer.Argument(min=0, help="Tokens per hour.")],
    config: ConfigOption = None,
) -> None:
    """Change the price now: on the platform, for the running agent's offers, and after."""
    from calctra_agent.daemon import PRICE_OVERRIDE_KEY, open_session

    session = open_session(load(config))
    try:
        resource = session.client.get_provider_resource()
        request = _resource_request_from(resource, price)
        session.client.update_provider_resource(request)
        session.state.put(**{PRICE_OVERRIDE_KEY: repr(price)})
    finally:
        session.client.close()
        session.state.close()
    console.print(f"price set to {price:g} tokens/hour for resource {resource.id}")


def _resource_request_from(resource: Any, price: float) -> Any:
    from calctra_agent.wire import ResourceRequest

    return ResourceRequest(
        name=resource.name,
        description=resource.description,
        type=resource.type,
        specs=resource.specs,
        price_per_hour=price,
        availability=resource.availability,
    )


@pricing_app.command("suggest")
@user_errors
def pricing_suggest(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """The median price of comparable resources on the market."""
    from calctra_agent.daemon import open_session

    session = open_session(load(config))
    try:
        own = session.client.get_provider_resource()
        prices = _comparable_prices(session.client, own)
    finally:
        session.client.close()
        session.state.close()
    if not prices:
        raise fail("no comparable resources on the market yet; nothing to compare with")
    import statistics

    median = statistics.median(prices)
    if json_output:
        print_json({"suggestedPricePerHour": median, "compared": len(prices)})
        return
    console.print(
        f"{median:g} tokens/hour: the median of {len(prices)} comparable resources "
        f"(yours is {own.price_per_hour:g})"
    )


def _comparable_prices(client: Any, own: Any) -> list[float]:
    """Prices of other active resources of the same kind (GPU or not) with between half and
    twice this machine's cores and memory."""
    specs = own.specs
    prices: list[float] = []
    for page in range(1, _SUGGEST_PAGES + 1):
        batch = client.list_resources(
            min_cpu=max(specs.cpu_cores // 2, 1),
            min_memory_gb=specs.memory_gb / 2,
            has_gpu=specs.gpu_model is not None,
            page=page,
            limit=100,
        )
        prices += [
            r.price_per_hour
            for r in batch.resources
            if r.id != own.id
            and r.specs.cpu_cores <= specs.cpu_cores * 2
            and r.specs.memory_gb <= specs.memory_gb * 2
        ]
        if page * batch.limit >= batch.total:
            break
    return prices
