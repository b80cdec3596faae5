"""The canonical form of an email address: one mailbox, one string, one identity.

Everything that stores, compares or counts an address goes through ``canonical`` (or
``lookup_key`` for input that may not even be an address): sign-up, login, invitations,
external-token linking, the CLI, rate-limit keys and migration 0005. Otherwise ``ADA@example.com``,
``ada@EXAMPLE.com`` and the same typed in fullwidth characters (U+FF41...) could be three
accounts, or one account with three rate-limit buckets.

The form: Unicode NFKC (fullwidth and other compatibility characters become the ones they stand
for), the local part lower-cased (mailbox providers treat it case-insensitively, though RFC 5321
allows them not to), and the domain lower-cased and IDNA-encoded (``bücher.example`` ->
``xn--bcher-kva.example``), the form DNS and SMTP use.
"""

from __future__ import annotations

import unicodedata

from email_validator import EmailNotValidError, validate_email

from coregraph.errors import BadUserInput

MAX_LENGTH = 254  # RFC 5321's path limit, less the angle brackets; the column's width too


def canonical(value: str, field: str = "email") -> str:
    """The canonical form of ``value``, or ``BAD_USER_INPUT`` naming ``field``."""
    if len(value) > MAX_LENGTH:
        raise BadUserInput(f"{field}: at most {MAX_LENGTH} characters", field=field)
    normalized = unicodedata.normalize("NFKC", value.strip())
    try:
        parts = validate_email(normalized, check_deliverability=False)
    except EmailNotValidError as exc:
        raise BadUserInput(f"{field}: not a valid email address", field=field) from exc
    address = f"{parts.local_part.lower()}@{parts.ascii_domain.lower()}"
    # The A-label form of a Unicode domain can be longer than what was typed.
    if len(address) > MAX_LENGTH:
        raise BadUserInput(f"{field}: at most {MAX_LENGTH} characters", field=field)
    return address


def lookup_key(value: str) -> str:
    """``canonical(value)`` for an address; for anything else (a login with a malformed
    address, a stored external placeholder) the same normalisation minus validation, so every
    spelling of it still names one key."""
    try:
        return canonical(value)
    except BadUserInput:
        return unicodedata.normalize("NFKC", value.strip()).lower()
