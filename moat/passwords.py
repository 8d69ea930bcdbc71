"""Password hashes of submission users: argon2id (argon2-cffi) with OWASP's minimum
parameters (19 MiB, 2 passes, 1 lane: about 20 ms a check on an idle core). argon2-cffi's own
defaults (RFC 9106's 64 MiB, 3 passes, 4 lanes) took 0.6 s a hash on a loaded 2-core machine,
and every AUTH pays for one.

A hash is a PHC string (``$argon2id$v=19$m=19456,t=2,p=1$salt$hash``): it carries its own
parameters, so hashes made with other ones still verify, and ``needs_rehash`` tells."""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


@cache
def _decoy() -> str:
    return _hasher().hash("no such user: the time of a real check")


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("an empty password")
    return _hasher().hash(password)


def verify_password(hashed: str | None, password: str | bytes) -> bool:
    """Whether ``password`` matches ``hashed``. For an unknown user (``hashed`` None) a decoy
    hash is checked all the same, so that the time of the answer does not tell who exists.
    CPU-bound (tens of milliseconds): call it in a thread."""
    try:
        matched = _hasher().verify(hashed or _decoy(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return matched and hashed is not None


def is_password_hash(value: str) -> bool:
    return value.startswith("$argon2")
