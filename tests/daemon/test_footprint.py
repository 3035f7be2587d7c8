"""What an idle daemon carries: heavy modules stay out until their work comes (bench/idle.py
measures the memory), and the wallet's key is read at the first claim, not at the start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.signature import Signature

from calctra_agent.errors import WalletError
from calctra_agent.wallet import ClaimSigner
from calctra_agent.wire import claim_message

REPO_ROOT = Path(__file__).resolve().parents[2]
# What each costs in an idle daemon: solders ~9 MB (signing), the Docker SDK ~6 MB (an engine
# that answers), rich/click/pygments ~6 MB (httpx's and our command lines).
HEAVY = ("solders", "docker", "requests", "rich", "click", "pygments")


def keygen_file(path: Path, keypair: Keypair) -> Path:
    path.write_text(json.dumps(list(bytes(keypair))))
    path.chmod(0o600)
    return path


def test_daemon_imports_none_of_the_heavy_modules_it_needs_only_later() -> None:
    code = (
        f"import sys, tests.agent_main\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert done.stdout.split() == []


def test_claim_signer_signs_with_the_wallet_read_at_the_first_claim(tmp_path: Path) -> None:
    keypair = Keypair()
    signer = ClaimSigner(keygen_file(tmp_path / "wallet.json", keypair), "res_1")

    claim = signer("job_1")

    message = claim_message("job_1", "res_1", claim.wallet_address, claim.timestamp)
    assert claim.wallet_address == str(keypair.pubkey())
    assert Signature.from_string(claim.signature).verify(keypair.pubkey(), message)


def test_claim_signer_refuses_a_wallet_others_can_read_at_the_start(tmp_path: Path) -> None:
    path = keygen_file(tmp_path / "wallet.json", Keypair())
    path.chmod(0o644)

    with pytest.raises(WalletError, match="accessible to other users"):
        ClaimSigner(path, "res_1")


def test_claim_signer_refuses_a_file_that_is_no_keypair_at_the_start(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    path.write_text("[1, 2, 3]")
    path.chmod(0o600)

    with pytest.raises(WalletError, match="holds 3 values"):
        ClaimSigner(path, "res_1")
