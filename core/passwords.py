"""Password hashes of the embedded server's users.

New hashes are argon2id (argon2-cffi) at OWASP's minimum for it: 19 MiB, 2 passes, 1 lane. That fits
the server's memory budget (64 MiB during a transfer) where OWASP's scrypt minimum (N=2^17, 128 MiB)
would not. Hashes made before (scrypt, ``scrypt$n$r$p$salt$hash``) still verify, so existing users
keep logging in; the next time a password is set it is hashed with argon2id.

A stored hash names its own cost, and a hash read from disk must not be able to make the server
allocate gigabytes: costs above the bounds below are refused, as is anything malformed (``False``,
never an exception).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argon2 import PasswordHasher

__all__ = ["hash_password", "verify_password"]

_ARGON2_MEMORY_KIB = 19 * 1024
_ARGON2_TIME = 2
_ARGON2_LANES = 1
# the most a stored hash may ask for
_MAX_MEMORY_BYTES = 64 * 1024 * 1024
_MAX_ARGON2_TIME = 10
_MAX_ARGON2_LANES = 8


@cache
def _hasher() -> PasswordHasher:
    # loaded on first use: only the embedded server has passwords (the cloud frontends import core.auth)
    from argon2 import PasswordHasher, Type

    return PasswordHasher(
        time_cost=_ARGON2_TIME, memory_cost=_ARGON2_MEMORY_KIB, parallelism=_ARGON2_LANES, type=Type.ID
    )


def hash_password(password: str) -> str:
    """argon2id with a random salt, in the PHC string form (``$argon2id$v=19$m=…,t=…,p=…$salt$hash``)."""
    return _hasher().hash(password)


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check; ``False`` for a wrong password and for any malformed or hostile encoding."""
    if not isinstance(password, str) or not isinstance(encoded, str):
        return False
    if encoded.startswith("$argon2id$"):
        return _verify_argon2(password, encoded)
    if encoded.startswith("scrypt$"):
        return _verify_scrypt(password, encoded)
    return False


def _verify_argon2(password: str, encoded: str) -> bool:
    from argon2 import exceptions, extract_parameters

    try:
        cost = extract_parameters(encoded)
        if (
            cost.memory_cost * 1024 > _MAX_MEMORY_BYTES
            or cost.time_cost > _MAX_ARGON2_TIME
            or cost.parallelism > _MAX_ARGON2_LANES
        ):
            return False
        return _hasher().verify(encoded, password)
    except (exceptions.VerificationError, exceptions.InvalidHashError, ValueError):
        # ValueError: a password that is not UTF-8 (lone surrogates) and bad numbers in the parameters
        return False


def _verify_scrypt(password: str, encoded: str) -> bool:
    """The hashes of earlier versions: ``scrypt$n$r$p$salt_b64$hash_b64``."""
    try:
        _, n_text, r_text, p_text, salt_text, hash_text = encoded.split("$")
        if not all(t.isdigit() for t in (n_text, r_text, p_text)):
            return False
        n, r, p = int(n_text), int(r_text), int(p_text)
        if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        if 128 * n * r * p > _MAX_MEMORY_BYTES // 2:
            return False
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(hash_text, validate=True)
        if len(salt) < 8 or not 16 <= len(expected) <= 64:
            return False
        actual = hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY_BYTES, dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        # ValueError covers bad ints, bad UTF-8 and scrypt's own refusals
        return False
    return hmac.compare_digest(actual, expected)
