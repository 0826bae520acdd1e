"""Bearer tokens the emulator issues and checks: HS256 JWTs for ``https://monitor.azure.com``.

The signing secret lives in the state dir, so ``secstream workspace token`` and the server agree without talking.
Error codes follow Azure Monitor's: AuthenticationFailed (no header), InvalidAuthenticationToken, InvalidAudience.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import jwt

from workspace.errors import ApiError
from workspace.paths import SECRET_FILE

AUDIENCES = ("https://monitor.azure.com", "https://monitor.azure.com/")
ISSUER = "https://sts.secstream.local/workspace-emulator/"
DEFAULT_TTL = 24 * 3600


def signing_secret(state_dir: Path) -> bytes:
    """The state dir's signing secret, made on first use (readable by the owner only)."""
    path = state_dir / SECRET_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def issue_token(secret: bytes, ttl: int = DEFAULT_TTL, audience: str = AUDIENCES[0],
                subject: str = "secstream-sink") -> tuple[str, int]:
    """A signed token and its expiry (Unix seconds)."""
    now = int(time.time())
    claims = {"aud": audience, "iss": ISSUER, "sub": subject, "iat": now, "nbf": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm="HS256"), now + ttl


class TokenVerifier:
    def __init__(self, secret: bytes, accept_any: bool = False) -> None:
        self.secret = secret
        self.accept_any = accept_any

    def check(self, authorization: str | None) -> None:
        """Raise a 401 ApiError unless the Authorization header carries an acceptable bearer token."""
        if not authorization:
            raise ApiError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "AuthenticationFailed",
                           "Authentication failed. The 'Authorization' header must be 'Bearer <token>'.")
        if self.accept_any:
            return
        try:
            jwt.decode(token.strip(), self.secret, algorithms=["HS256"], audience=list(AUDIENCES),
                       options={"require": ["exp", "aud"]})
        except jwt.InvalidAudienceError:
            raise ApiError(401, "InvalidAudience", "The access token audience is invalid. It must be one of: "
                           + ", ".join(AUDIENCES) + ".") from None
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "InvalidAuthenticationToken", "The access token has expired.") from None
        except jwt.PyJWTError:
            raise ApiError(401, "InvalidAuthenticationToken", "The access token is invalid.") from None
