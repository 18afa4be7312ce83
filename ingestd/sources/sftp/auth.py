"""Who may log in: argon2id password hashes, OpenSSH public keys, IP allow-lists.

Password checks run in a thread (argon2 is slow on purpose) and unknown users
are checked against a dummy hash, so the time taken does not tell which
schools exist.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable

import argon2
import asyncssh

# argon2id with OWASP's minimum (19 MiB, 2 passes, 1 lane): a school's SIS logs in once a day,
# but a hundred schools at 2 a.m. must not queue for seconds of CPU each (RFC 9106's
# 64 MiB x 3 profile costs ~0.2 s of CPU a check here). Old hashes keep their own parameters.
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(24))


def hash_password(password: str) -> str:
    """An argon2id hash to store in the tenant file (never the password)."""
    return _HASHER.hash(password)


def generate_password() -> str:
    """A strong password for a school's SIS scheduler (no characters that confuse typing)."""
    return secrets.token_urlsafe(18)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when `password` matches; an absent hash is checked against a dummy (same cost)."""
    try:
        return _HASHER.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


async def verify_password_async(stored_hash: str | None, password: str) -> bool:
    """verify_password in a thread: argon2 takes tens of milliseconds of CPU."""
    return await asyncio.to_thread(verify_password, stored_hash, password)


def parse_public_keys(lines: Iterable[str]) -> list[asyncssh.SSHKey]:
    """OpenSSH public key lines (`ssh-ed25519 AAAA... comment`) as keys."""
    return [asyncssh.import_public_key(line.strip()) for line in lines if line.strip()]


def key_allowed(key: asyncssh.SSHKey, allowed: list[asyncssh.SSHKey]) -> bool:
    """True when `key` is one of `allowed`."""
    return any(key.public_data == k.public_data for k in allowed)
