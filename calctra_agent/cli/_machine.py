"""`calctra-agent probe` and `calctra-agent config show`."""

from __future__ import annotations

import typer

from calctra_agent.cli._app import app, console, user_errors
from calctra_agent.cli._options import ConfigOption, JsonOption, load, print_json

config_app = typer.Typer(help="Inspect the agent's configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.command()
@user_errors
def probe(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Show what this machine has, and what it offers after the owner's reservation."""
    from calctra_agent.probe import probe_as_json, probe_machine, render_probe_table

    settings = load(config)
    reservation = settings.reserve.to_reservation()
    result = probe_machine(settings.work_dir)
    if json_output:
        print_json(probe_as_json(result, reservation))
    else:
        console.print(render_probe_table(result, reservation))


@config_app.command("show")
@user_errors
def config_show(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Print the effective configuration (file, then CALCTRA_* variables), secrets hidden."""
    from calctra_agent.config import redacted

    values = redacted(load(config))
    if json_output:
        print_json(values)
        return
    for key, value in values.items():
        console.print(f"[bold]{key}[/bold] = {value!r}", highlight=False)
