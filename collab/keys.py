"""Public-key tokens (ES256, EdDSA): the app server signs with its private key, collab holds only the public one.

With an HMAC secret (HS256) whoever can verify a token can also mint one, so
collab's host holding the secret could forge access to every document. With
`--auth-public-key` it cannot: a leaked collab configuration grants nothing.
This needs the `cryptography` package, an optional extra (`pip install
'collab[keys]'`): it is a large compiled dependency that HS256 users, the
common case, do not need; collab imports it only when a key is configured.

    ES256   ECDSA on P-256 with SHA-256 (RFC 7518 section 3.4): the signature is r || s, 64 bytes
    EdDSA   Ed25519 (RFC 8037)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["PublicKey", "load_public_key"]


class PublicKey:
    """A verifying key and the one JWS algorithm it verifies (`alg` in a token's header must name it)."""

    def __init__(self, key: Any, algorithm: str) -> None:
        self._key = key
        self.algorithm = algorithm

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            if self.algorithm == "EdDSA":
                self._key.verify(signature, signing_input)
            else:
                from cryptography.hazmat.primitives import hashes
                from cryptography.hazmat.primitives.asymmetric import ec
                from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

                if len(signature) != 64:
                    return False
                der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
                self._key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def load_public_key(path: Path) -> PublicKey:
    """The PEM public key in `path` (P-256 for ES256, Ed25519 for EdDSA); `ConfigError` saying what is wrong."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        raise ConfigError("--auth-public-key needs the cryptography package: pip install 'collab[keys]'") from None
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as error:
        raise ConfigError(f"cannot read --auth-public-key {path}: {error.strerror}") from error
    except ValueError as error:
        raise ConfigError(f"--auth-public-key {path} is not a PEM public key: {error}") from error
    if isinstance(key, ed25519.Ed25519PublicKey):
        return PublicKey(key, "EdDSA")
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return PublicKey(key, "ES256")
    raise ConfigError(f"--auth-public-key {path}: only P-256 (ES256) and Ed25519 (EdDSA) keys are supported")
