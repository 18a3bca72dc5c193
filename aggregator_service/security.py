"""Who may talk to the aggregator: TLS credentials and per-client bearer tokens.

Tokens are read from a file (as a Kubernetes Secret mounts it), kept only as
SHA-256 digests in memory, and never logged or exported.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import grpc

from aggregator_service.errors import RejectedError


class UnauthenticatedError(RejectedError):
    """No bearer token, or one that belongs to nobody (UNAUTHENTICATED)."""

    reason = "unauthenticated"


class PermissionDeniedError(RejectedError):
    """A valid token used for another client's id (PERMISSION_DENIED)."""

    reason = "permission_denied"


class SecurityConfigError(Exception):
    """TLS files or the tokens file are missing or malformed."""


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key; with client_ca, clients must present certificates (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """gRPC server credentials from PEM files."""
    ca = _read(tls.client_ca, "client CA") if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(tls.key, "TLS key"), _read(tls.cert, "TLS certificate"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Maps bearer tokens (by digest) to the client id they belong to."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._by_digest = {_digest(token): client for client, token in tokens.items()}

    @classmethod
    def from_file(cls, path: Path) -> "TokenTable":
        """Parse ``client-id:token`` lines; blank lines and # comments are ignored."""
        tokens: dict[str, str] = {}
        seen: set[str] = set()
        for n, raw in enumerate(_read(path, "tokens file").decode("utf-8", "replace").splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            client, sep, token = line.partition(":")
            client, token = client.strip(), token.strip()
            if not sep or not client or not token:
                raise SecurityConfigError(f"{path}: line {n} is not 'client-id:token'")
            if client in tokens:
                raise SecurityConfigError(f"{path}: line {n}: client {client!r} has a second token")
            if len(token) < 16:
                raise SecurityConfigError(f"{path}: line {n}: the token of {client!r} is shorter than 16 characters")
            if token in seen:
                raise SecurityConfigError(f"{path}: line {n}: a token is shared by two clients")
            seen.add(token)
            tokens[client] = token
        if not tokens:
            raise SecurityConfigError(f"{path}: no tokens")
        return cls(tokens)

    def __len__(self) -> int:
        return len(self._by_digest)

    def client_for(self, token: str) -> str | None:
        # Looking up a digest reveals nothing useful about stored tokens through timing.
        return self._by_digest.get(_digest(token))


class Authenticator:
    """Checks the bearer token of every RPC; ``None`` tokens means the explicit insecure mode."""

    def __init__(self, tokens: TokenTable | None) -> None:
        self._tokens = tokens

    @property
    def enabled(self) -> bool:
        return self._tokens is not None

    def identify(self, context: grpc.ServicerContext) -> str | None:
        """The client id the caller's token belongs to (None in insecure mode)."""
        if self._tokens is None:
            return None
        header = ""
        for key, value in context.invocation_metadata():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise UnauthenticatedError("missing bearer token (metadata 'authorization: Bearer <token>')")
        client = self._tokens.client_for(token.strip())
        if client is None:
            raise UnauthenticatedError("unknown bearer token")
        return client

    @staticmethod
    def authorize(identity: str | None, claimed_client_id: str) -> None:
        """A token may only act for its own client id."""
        if identity is not None and identity != claimed_client_id:
            raise PermissionDeniedError(f"this token does not belong to client {claimed_client_id!r}")
