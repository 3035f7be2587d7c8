"""`calctra-agent wallet`: the provider's Solana keypair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calctra_agent.cli._app import app, console, user_errors
from calctra_agent.cli._options import ConfigOption, JsonOption, load, print_json

wallet_app = typer.Typer(help="The Solana wallet payments go to.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")


@wallet_app.command("new")
@user_errors
def wallet_new(config: ConfigOption = None) -> None:
    """Create a new keypair in the state dir (never over an existing one)."""
    from calctra_agent.wallet import create_wallet, wallet_address

    settings = load(config)
    keypair = create_wallet(settings.wallet_path)
    console.print(f"created wallet {wallet_address(keypair)} in {settings.wallet_path}")


@wallet_app.command("import")
@user_errors
def wallet_import(
    source: Annotated[Path, typer.Argument(help="A keypair file as solana-keygen writes it.")],
    config: ConfigOption = None,
) -> None:
    """Use an existing Solana keypair file (it is copied, mode 0600)."""
    from calctra_agent.wallet import import_wallet, wallet_address

    settings = load(config)
    keypair = import_wallet(source, settings.wallet_path)
    console.print(f"imported wallet {wallet_address(keypair)} into {settings.wallet_path}")


@wallet_app.command("show")
@user_errors
def wallet_show(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """The wallet's address, its SOL balance (with rpc_url set) and platform earnings."""
    from calctra_agent.wallet import fetch_sol_balance, load_wallet, wallet_address

    settings = load(config)
    address = wallet_address(load_wallet(settings.wallet_path))
    lamports = fetch_sol_balance(address, settings.rpc_url) if settings.rpc_url else None
    info = {
        "address": address,
        "path": str(settings.wallet_path),
        "solBalance": None if lamports is None else lamports / 1_000_000_000,
    }
    if json_output:
        print_json(info)
        return
    console.print(f"address      {address}")
    console.print(f"file         {settings.wallet_path}")
    if lamports is None:
        console.print("sol balance  unknown (set rpc_url to ask a Solana RPC node)")
    else:
        console.print(f"sol balance  {lamports / 1_000_000_000:.9f} SOL")
