"""The provider's wallet: the Solana CLI's keypair file, kept private, signing claims and real
transfers (in solders' in-process LiteSVM)."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction
from solders.transaction_metadata import TransactionMetadata

from calctra_agent import wallet
from calctra_agent.errors import WalletError
from calctra_agent.wire import claim_message
from tests.conftest import free_port

SEED = bytes(range(32))


def keygen_file(path: Path, keypair: Keypair) -> Path:
    """Write `keypair` exactly as solana-keygen does: `[n,n,...]`, seed then public key, 0600."""
    numbers = list(keypair.secret()) + list(bytes(keypair.pubkey()))
    path.write_text("[" + ",".join(str(n) for n in numbers) + "]")
    path.chmod(0o600)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_load_reads_a_solana_keygen_file(tmp_path: Path) -> None:
    expected = Keypair.from_seed(SEED)
    path = keygen_file(tmp_path / "id.json", expected)

    loaded = wallet.load_wallet(path)

    assert wallet.wallet_address(loaded) == str(expected.pubkey())
    assert bytes(loaded) == bytes(expected)
    assert loaded.secret() == SEED


def test_created_wallet_is_private_and_in_keygen_format(tmp_path: Path) -> None:
    path = tmp_path / "state" / "wallet.json"

    created = wallet.create_wallet(path)

    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    numbers = json.loads(path.read_text())
    assert len(numbers) == 64 and all(0 <= n <= 255 for n in numbers)
    assert bytes(numbers[32:]) == bytes(created.pubkey())
    assert wallet.load_wallet(path).pubkey() == created.pubkey()
    assert [p.name for p in path.parent.iterdir()] == ["wallet.json"]  # no temporary left


def test_create_refuses_to_overwrite_an_existing_wallet(tmp_path: Path) -> None:
    path = keygen_file(tmp_path / "wallet.json", Keypair.from_seed(SEED))
    before = path.read_bytes()

    with pytest.raises(WalletError, match="already exists.*refusing to overwrite"):
        wallet.create_wallet(path)

    assert path.read_bytes() == before


def test_import_copies_a_valid_keypair_with_mode_0600(tmp_path: Path) -> None:
    source = keygen_file(tmp_path / "id.json", Keypair.from_seed(SEED))
    source.chmod(0o644)
    target = tmp_path / "state" / "wallet.json"

    imported = wallet.import_wallet(source, target)

    assert mode(target) == 0o600
    assert target.read_bytes() == source.read_bytes()
    assert imported.pubkey() == Keypair.from_seed(SEED).pubkey()
    with pytest.raises(WalletError, match="already exists"):
        wallet.import_wallet(source, target)


def test_import_refuses_a_malformed_source_and_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "id.json"
    source.write_text("[1, 2, 3]")
    target = tmp_path / "state" / "wallet.json"

    with pytest.raises(WalletError, match="holds 3 values"):
        wallet.import_wallet(source, target)

    assert not target.exists()


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660])
def test_load_refuses_a_wallet_others_can_read(tmp_path: Path, file_mode: int) -> None:
    path = keygen_file(tmp_path / "wallet.json", Keypair.from_seed(SEED))
    path.chmod(file_mode)

    with pytest.raises(WalletError) as caught:
        wallet.load_wallet(path)

    assert f"chmod 600 {path}" in str(caught.value)
    assert f"{file_mode:04o}" in str(caught.value)


def test_load_names_the_missing_file_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"

    with pytest.raises(WalletError, match="no wallet at .*nowhere.json.*wallet new"):
        wallet.load_wallet(path)


def _numbers(seed: bytes = SEED) -> list[int]:
    keypair = Keypair.from_seed(seed)
    return list(keypair.secret()) + list(bytes(keypair.pubkey()))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json at all", "not valid JSON"),
        ('{"secret": [1, 2]}', "JSON dict, not an array"),
        (json.dumps(_numbers()[:63]), "holds 63 values"),
        (json.dumps(_numbers()[:63] + [256]), "value 63 is 256"),
        (json.dumps([-1] + _numbers()[1:]), "value 0 is -1"),
        (json.dumps(_numbers()[:10] + [1.5] + _numbers()[11:]), "value 10 is 1.5"),
        (json.dumps(_numbers()[:5] + [True] + _numbers()[6:]), "value 5 is true"),
    ],
)
def test_load_refuses_a_malformed_file_saying_why(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "wallet.json"
    path.write_text(content)
    path.chmod(0o600)

    with pytest.raises(WalletError) as caught:
        wallet.load_wallet(path)

    assert str(path) in str(caught.value)
    assert "JSON array of 64 integers" in str(caught.value)
    assert problem in str(caught.value)


def test_load_refuses_a_public_half_that_does_not_match_the_secret(tmp_path: Path) -> None:
    mismatched = _numbers()[:32] + list(bytes(Keypair.from_seed(bytes(32)).pubkey()))
    path = tmp_path / "wallet.json"
    path.write_text(json.dumps(mismatched))
    path.chmod(0o600)

    with pytest.raises(WalletError, match="corrupt: its public key .* is not the one"):
        wallet.load_wallet(path)


def test_claim_signature_verifies_for_its_claim_only() -> None:
    keypair = Keypair.from_seed(SEED)

    address, signature_b58 = wallet.sign_claim(keypair, "job_1", "res_1", 1_796_294_640)

    signature = Signature.from_string(signature_b58)
    pubkey = Pubkey.from_string(address)
    assert address == str(keypair.pubkey())
    assert signature.verify(pubkey, claim_message("job_1", "res_1", address, 1_796_294_640))
    assert not signature.verify(pubkey, claim_message("job_2", "res_1", address, 1_796_294_640))
    assert not signature.verify(pubkey, claim_message("job_1", "res_1", address, 1_796_294_641))


def test_claim_request_is_timestamped_now_and_signed() -> None:
    keypair = Keypair.from_seed(SEED)

    claim = wallet.claim_request(keypair, "job_1", "res_1")

    assert abs(claim.timestamp - time.time()) < 5
    message = claim_message("job_1", "res_1", claim.wallet_address, claim.timestamp)
    assert Signature.from_string(claim.signature).verify(keypair.pubkey(), message)


def test_loaded_wallet_signs_a_transfer_that_moves_lamports(tmp_path: Path) -> None:
    path = keygen_file(tmp_path / "wallet.json", Keypair.from_seed(SEED))
    payer = wallet.load_wallet(path)
    recipient = Keypair().pubkey()
    svm = LiteSVM()
    svm.airdrop(payer.pubkey(), 2 * wallet.LAMPORTS_PER_SOL)

    instruction = transfer(
        TransferParams(from_pubkey=payer.pubkey(), to_pubkey=recipient, lamports=250_000_000)
    )
    message = Message([instruction], payer.pubkey())
    result = svm.send_transaction(Transaction([payer], message, svm.latest_blockhash()))

    assert isinstance(result, TransactionMetadata), result
    assert svm.get_balance(recipient) == 250_000_000
    payer_after = svm.get_balance(payer.pubkey())
    assert payer_after is not None
    assert payer_after < 2 * wallet.LAMPORTS_PER_SOL - 250_000_000  # the fee was paid too


def test_sol_balance_reports_an_unreachable_rpc_clearly() -> None:
    rpc_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    with pytest.raises(WalletError) as caught:
        wallet.fetch_sol_balance(str(Keypair.from_seed(SEED).pubkey()), rpc_url, timeout_s=2)

    assert f"Solana RPC at {rpc_url}" in str(caught.value)
    assert "ConnectError" in str(caught.value)


def test_sol_balance_refuses_an_address_that_is_not_base58() -> None:
    with pytest.raises(WalletError, match="not a base58 Solana address"):
        wallet.fetch_sol_balance("not-an-address", "http://127.0.0.1:1")
