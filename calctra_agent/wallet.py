"""The provider's Solana wallet: a keypair file in the Solana CLI's format.

The file is what `solana-keygen new` writes: a JSON array of 64 integers 0-255, the 32-byte
secret seed followed by the 32-byte public key. It stays readable by its owner only (0600);
a wallet that others can read is refused rather than used.

solders is imported only where a key is made, read or used: it is about 9 MB of memory that
an idle daemon, which signs nothing until a job is done, need not carry.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from calctra_agent.errors import WalletError
from calctra_agent.wire import ClaimRequest, claim_message

if TYPE_CHECKING:
    from solders.keypair import Keypair

__all__ = [
    "ClaimSigner",
    "LAMPORTS_PER_SOL",
    "claim_request",
    "create_wallet",
    "fetch_sol_balance",
    "import_wallet",
    "load_wallet",
    "sign_claim",
    "wallet_address",
]

logger = logging.getLogger(__name__)

LAMPORTS_PER_SOL = 1_000_000_000
KEYPAIR_LENGTH = 64
_MAX_FILE_BYTES = 64 * 1024  # 64 numbers take under 300 bytes; anything far larger is not one
_FORMAT = "a JSON array of 64 integers 0-255, as solana-keygen writes"


def create_wallet(path: Path) -> Keypair:
    """Generate a new keypair and write it to `path` (mode 0600), never over an existing
    file; a missing parent directory is created with mode 0700."""
    from solders.keypair import Keypair

    keypair = Keypair()
    _write_new(path, keypair)
    logger.info("wallet created path=%s address=%s", path, keypair.pubkey())
    return keypair


def load_wallet(path: Path) -> Keypair:
    """Read the keypair at `path`, refusing a file that others may read or that is not a
    Solana keypair whose public half matches its secret half."""
    _check_private(path)
    return _parse(path, _read(path))


def import_wallet(source: Path, path: Path) -> Keypair:
    """Copy the keypair file `source` (such as ~/.config/solana/id.json) to `path`, with mode
    0600, after checking that it is a valid keypair; an existing `path` is never replaced."""
    keypair = _parse(source, _read(source))
    if _mode(source) & 0o077:
        logger.warning("wallet import source is readable by others path=%s", source)
    _write_new(path, keypair)
    logger.info("wallet imported path=%s address=%s", path, keypair.pubkey())
    return keypair


def wallet_address(keypair: Keypair) -> str:
    """The wallet's base58 address, the form the platform's `walletAddress` takes."""
    return str(keypair.pubkey())


def sign_claim(keypair: Keypair, job_id: str, resource_id: str, timestamp: int) -> tuple[str, str]:
    """Sign the claim of payment for `job_id` (docs/provider-protocol.md, Claims); returns
    the wallet address and the base58 ed25519 signature."""
    address = wallet_address(keypair)
    signature = keypair.sign_message(claim_message(job_id, resource_id, address, timestamp))
    return address, str(signature)


def claim_request(
    keypair: Keypair, job_id: str, resource_id: str, timestamp: int | None = None
) -> ClaimRequest:
    """A signed claim, timestamped now unless told otherwise. The server accepts it within
    10 minutes of its clock, so sign it right before sending, not when the job ends."""
    when = int(time.time()) if timestamp is None else timestamp
    address, signature = sign_claim(keypair, job_id, resource_id, when)
    return ClaimRequest(wallet_address=address, timestamp=when, signature=signature)


class ClaimSigner:
    """Signs the claims of one resource with the wallet at `path`, as the daemon's outbox
    sends them. The file's permissions and format are checked at once; the key itself is read
    at the first claim, so that a daemon that has not been paid yet does not load solders."""

    def __init__(self, path: Path, resource_id: str) -> None:
        _check_private(path)
        _numbers(path, _read(path))
        self.path = path
        self.resource_id = resource_id
        self._keypair: Keypair | None = None

    def __call__(self, job_id: str) -> ClaimRequest:
        if self._keypair is None:
            self._keypair = load_wallet(self.path)
        return claim_request(self._keypair, job_id, self.resource_id)


def fetch_sol_balance(address: str, rpc_url: str, *, timeout_s: float = 10.0) -> int:
    """The on-chain balance of `address` in lamports, asked of the Solana RPC at `rpc_url`."""
    from solana.exceptions import SolanaRpcException
    from solana.rpc.api import Client
    from solana.rpc.core import RPCException
    from solders.pubkey import Pubkey

    try:
        pubkey = Pubkey.from_string(address)
    except ValueError as exc:
        raise WalletError(f"{address!r} is not a base58 Solana address") from exc
    client = Client(rpc_url, timeout=timeout_s)
    try:
        return int(client.get_balance(pubkey).value)
    except (SolanaRpcException, RPCException) as exc:
        cause = exc.__cause__ or exc
        raise WalletError(
            f"cannot read the SOL balance of {address} from the Solana RPC at {rpc_url}: "
            f"{type(cause).__name__}: {cause}; check the RPC URL and that the node is reachable"
        ) from exc
    finally:
        # solana-py 0.36's synchronous Client has no close() of its own.
        client._provider.session.close()


def _check_private(path: Path) -> None:
    mode = _mode(path)
    if mode & 0o077:
        raise WalletError(
            f"wallet {path} is accessible to other users (mode {mode:04o}); anyone who reads "
            f"it can spend from it. Run `chmod 600 {path}` and try again"
        )


def _mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise WalletError(
            f"no wallet at {path}; create one with `calctra-agent wallet new` or import a "
            "keypair file with `calctra-agent wallet import FILE`"
        ) from None
    except OSError as exc:
        raise WalletError(f"cannot read wallet {path}: {exc.strerror}") from exc


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            content = file.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise WalletError(f"no wallet file at {path}") from None
    except OSError as exc:
        raise WalletError(f"cannot read wallet {path}: {exc.strerror}") from exc
    if len(content) > _MAX_FILE_BYTES:
        raise WalletError(f"wallet {path} is not a Solana keypair file ({_FORMAT}): too large")
    return content


def _parse(path: Path, content: bytes) -> Keypair:
    from solders.keypair import Keypair
    from solders.pubkey import Pubkey

    numbers = _numbers(path, content)
    raw = bytes(numbers)
    derived = Keypair.from_seed(raw[:32]).pubkey()
    if bytes(derived) != raw[32:]:
        raise WalletError(
            f"wallet {path} is corrupt: its public key {Pubkey.from_bytes(raw[32:])} is not "
            f"the one its secret key gives ({derived}); restore the file from a backup"
        )
    return Keypair.from_bytes(raw)


def _numbers(path: Path, content: bytes) -> list[int]:
    def malformed(problem: str) -> WalletError:
        return WalletError(f"wallet {path} is not a Solana keypair file ({_FORMAT}): {problem}")

    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise malformed("it is not valid JSON") from None
    if not isinstance(value, list):
        raise malformed(f"it holds a JSON {type(value).__name__}, not an array")
    if len(value) != KEYPAIR_LENGTH:
        raise malformed(f"it holds {len(value)} values")
    for index, number in enumerate(value):
        if type(number) is not int or not 0 <= number <= 255:
            raise malformed(f"value {index} is {json.dumps(number)}")
    return value


def _write_new(path: Path, keypair: Keypair) -> None:
    """Write the keypair file atomically: a private temporary file, flushed to disk, then
    linked into place, which fails rather than replaces should `path` exist."""
    if os.path.lexists(path):
        raise WalletError(
            f"a wallet already exists at {path}; refusing to overwrite it. Move it away first "
            "if you really mean to replace it (its funds stay with its key)"
        )
    _make_parent(path.parent)
    content = json.dumps(list(bytes(keypair)), separators=(",", ":")).encode()
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        _write_private(temp, content)
        _link_into_place(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _make_parent(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise WalletError(
            f"cannot create the wallet's directory {directory}: {exc.strerror}"
        ) from exc


def _write_private(temp: Path, content: bytes) -> None:
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        raise WalletError(f"cannot write wallet {temp.parent}: {exc.strerror}") from exc


def _link_into_place(temp: Path, path: Path) -> None:
    try:
        os.link(temp, path)
    except FileExistsError:
        raise WalletError(f"a wallet already exists at {path}; refusing to overwrite it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise WalletError(f"cannot write wallet {path}: {exc.strerror}") from exc
        # A file system without hard links: a rename, after the check above, is what is left.
        os.rename(temp, path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
