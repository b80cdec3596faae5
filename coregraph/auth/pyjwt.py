"""PyJWT, with cryptography loaded only where an asymmetric algorithm needs it.

PyJWT imports cryptography (for its RSA, EC and OKP algorithms) whenever it is installed, and
it is (the external issuer needs it). coregraph's own tokens are HMAC (HS256/384/512), which
PyJWT computes with ``hmac`` and ``hashlib``; only a configured external issuer (RS*, ES*, PS*)
needs cryptography. Loaded, cryptography holds ~9 MiB of a server's resident set for the life
of the process (its Rust extension, x509 and key modules: bench/RESULTS.md, "Files"), so a
process whose tokens are all HMAC imports PyJWT with cryptography hidden, and PyJWT defines only
its HMAC algorithms, as it does where cryptography is not installed.

When an asymmetric algorithm is needed after that (a process that made an HMAC-only token
service first, then one with an external issuer: tests do), PyJWT's modules that read
cryptography's presence are executed again in place, so every ``jwt`` name (``jwt.decode``,
``jwt.PyJWKSet``...) now has the asymmetric algorithms; its exception classes are not
re-executed, so an ``except jwt.PyJWTError`` catches the same classes before and after.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

# PyJWT's modules that read whether cryptography is present (directly or through a name they
# imported from one that does), in import order; jwt.exceptions, jwt.utils and jwt.types do not.
_READ_CRYPTOGRAPHY = (
    "jwt.algorithms",
    "jwt.api_jwk",
    "jwt.api_jws",
    "jwt.api_jwt",
    "jwt.jwks_client",
    "jwt",
)


def pyjwt(*, asymmetric: bool = False) -> ModuleType:
    """The ``jwt`` module; with its asymmetric algorithms when ``asymmetric``, and without
    importing cryptography for it otherwise (unless something else already has)."""
    if "jwt" not in sys.modules:
        if asymmetric or "cryptography" in sys.modules:
            import jwt
        else:
            # PyJWT catches the ModuleNotFoundError a None entry raises, as if uninstalled.
            sys.modules["cryptography"] = None  # type: ignore[assignment]
            try:
                import jwt  # noqa: F401
            finally:
                del sys.modules["cryptography"]
    module = sys.modules["jwt"]
    if asymmetric and not module.algorithms.has_crypto:
        for name in _READ_CRYPTOGRAPHY:
            importlib.reload(sys.modules[name])
    return module
