"""Password hashing (argon2id) and the JWTs that authenticate users."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

# Verifying against this hash when the email is unknown keeps login's timing the same for
# unknown and known accounts.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def load_or_create_secret(path: Path) -> bytes:
    """The signing key, generated once and kept 0600 in the data dir."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret.hex())
    return secret


@dataclass(frozen=True)
class Claims:
    user_id: str
    expires_at: int


class TokenError(Exception):
    """A bearer token that is missing, malformed, forged or expired."""


class TokenSigner:
    """Issues and checks HS256 tokens. Checks are cached per token string, since an agent or a
    client sends the same token many times a minute."""

    _ALGORITHM = "HS256"

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._decode_cached = lru_cache(maxsize=4096)(self._decode)

    def issue(self, user_id: str) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "iat": now, "exp": now + self.ttl_s, "typ": "user"}
        return jwt.encode(claims, self._secret, algorithm=self._ALGORITHM)

    def check(self, token: str) -> Claims:
        claims = self._decode_cached(token)
        if claims.expires_at <= time.time():
            raise TokenError("the token has expired; log in again")
        return claims

    def _decode(self, token: str) -> Claims:
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[self._ALGORITHM],
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired; log in again") from None
        except jwt.PyJWTError:
            raise TokenError("the token is not valid") from None
        if payload.get("typ") != "user" or not isinstance(payload["sub"], str):
            raise TokenError("the token is not valid")
        return Claims(user_id=payload["sub"], expires_at=int(payload["exp"]))
