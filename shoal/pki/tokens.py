"""Swarm-style join tokens: ``SWMTKN-1-<CA digest>-<secret>``.

The digest is the SHA-256 of the cluster CA certificate's DER, in base 36, zero-padded
to 50 characters; the secret is 128 random bits in base 36, 25 characters — the shape
Docker's ``SWMTKN-1-...`` tokens have, so users recognise them. A joiner fetches the CA
from the address it was given and checks it against the digest before trusting
anything that CA signed: a token pins the cluster, not just a password. Workers and
managers have separate secrets; a manager token must never work as a worker's and vice
versa, and rotating one leaves the other alone. Secrets are compared in constant time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets

PREFIX = "SWMTKN"
VERSION = "1"
DIGEST_LEN = 50
SECRET_LEN = 25
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_TOKEN = re.compile(rf"^{PREFIX}-{VERSION}-([0-9a-z]{{{DIGEST_LEN}}})-([0-9a-z]{{{SECRET_LEN}}})$")


class TokenError(ValueError):
    """A join token that is malformed, for another cluster, or wrong."""


def base36(value: int, width: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def ca_digest(ca_der: bytes) -> str:
    """The token's CA part: SHA-256 of the CA certificate's DER, base 36, 50 characters."""
    return base36(int.from_bytes(hashlib.sha256(ca_der).digest(), "big"), DIGEST_LEN)


def new_secret() -> str:
    return base36(secrets.randbits(128), SECRET_LEN)


def make_token(ca_der: bytes, secret: str) -> str:
    if not re.fullmatch(rf"[0-9a-z]{{{SECRET_LEN}}}", secret):
        raise ValueError(f"a join token secret is {SECRET_LEN} base-36 characters")
    return f"{PREFIX}-{VERSION}-{ca_digest(ca_der)}-{secret}"


@dataclasses.dataclass(frozen=True)
class Token:
    digest: str
    secret: str

    def check_ca(self, ca_der: bytes, where: str = "the manager") -> None:
        """TokenError unless the CA served by ``where`` is the one this token pins."""
        if not hmac.compare_digest(self.digest, ca_digest(ca_der)):
            raise TokenError(
                f"the join token is for another cluster: the CA certificate {where} "
                "serves does not match the token's CA digest. Check the address, or get a "
                "current token with `swctl join-token worker` on a manager of the cluster")

    def matches(self, secret: str) -> bool:
        """Constant-time comparison with a cluster's secret."""
        return hmac.compare_digest(self.secret.encode(), secret.encode())


def parse_token(text: str) -> Token:
    match = _TOKEN.match(text.strip())
    if match is None:
        raise TokenError(
            f'invalid join token "{_shorten(text.strip())}": expected '
            f"{PREFIX}-{VERSION}-<{DIGEST_LEN} characters>-<{SECRET_LEN} characters>, as "
            "`swctl join-token worker` or `swctl join-token manager` prints it")
    return Token(match.group(1), match.group(2))


def secret_hash(secret: str) -> str:
    """What a cluster may store of a secret (hex SHA-256): enough to check a token,
    useless for making one."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches_hash(token: Token, stored_hash: str) -> bool:
    """Constant-time check of a token's secret against a stored ``secret_hash``."""
    return hmac.compare_digest(secret_hash(token.secret), stored_hash)


def _shorten(text: str) -> str:
    return text if len(text) <= 24 else text[:20] + "..."
