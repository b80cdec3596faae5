"""Store every email address in its canonical form (``coregraph.services.emails``).

``users.email`` and ``invitations.email`` themselves become canonical, rather than gaining an
``email_canonical`` column beside them: the application already stored addresses lower-cased,
so there is no typed spelling worth keeping for display, and one column cannot disagree with
itself. The existing unique index on ``users.email`` (``uq_users_email``) then is the unique
index on the canonical form: one account per mailbox, enforced by the database. Invitations
keep no unique index (a mailbox is invited to many tenants, and again after a revocation).

Addresses stored before this revision were NFC-normalised and lower-cased with a Unicode domain:
fullwidth characters in the local part and Unicode domains get rewritten. Values that are not
addresses (an external identity's placeholder) get the same normalisation without validation
(``emails.lookup_key``), which leaves them as they are.

If two accounts turn out to be one mailbox, the migration stops and names them: merging
accounts (whose memberships, sessions and audit trail differ) is a decision for an operator, not
for a migration. Nothing is changed until every address is checked.

The canonical form is imported, not copied: it must be the very function the application
compares with. Should it ever change, a new migration applies the new form to stored rows.

Data only, no schema change, so no batch operations are needed on SQLite. Downgrade writes
domains back in Unicode form, as the code before this revision looked them up.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op
from email_validator import EmailNotValidError, validate_email

from coregraph.services import emails

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("users", "invitations")


def _rewrite(table: str, form: Callable[[str], str]) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text(f"SELECT id, email FROM {table} ORDER BY id")).all()
    rewritten = {row.id: form(row.email) for row in rows}
    changed = {row.id: rewritten[row.id] for row in rows if rewritten[row.id] != row.email}
    if table == "users":
        owners: dict[str, str] = {}
        clashes = []
        for row in rows:
            address = rewritten[row.id]
            if address in owners:
                clashes.append(f"{owners[address]} and {row.id}")
            owners.setdefault(address, row.id)
        if clashes:
            raise RuntimeError(
                "these accounts share one mailbox once their addresses are canonical; merge or "
                "remove one of each pair, then migrate again: " + "; ".join(clashes)
            )
    for row_id, address in changed.items():
        bind.execute(
            sa.text(f"UPDATE {table} SET email = :email WHERE id = :id"),
            {"email": address, "id": row_id},
        )


def _unwalled(table: str) -> bool:
    """PostgreSQL: lift row-level security's FORCE for the owner running this migration (it
    would see no invitation otherwise); True when it has to be put back."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    forced = bind.execute(
        sa.text("SELECT relforcerowsecurity FROM pg_class WHERE oid = CAST(:t AS regclass)"),
        {"t": table},
    ).scalar()
    if forced:
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    return bool(forced)


def _apply(form: Callable[[str], str]) -> None:
    for table in _TABLES:
        forced = _unwalled(table)
        _rewrite(table, form)
        if forced:
            op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")


def _as_before(address: str) -> str:
    """How the code before this revision normalised an address (Unicode domain)."""
    try:
        return validate_email(address, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return address


def upgrade() -> None:
    _apply(emails.lookup_key)


def downgrade() -> None:
    _apply(_as_before)
