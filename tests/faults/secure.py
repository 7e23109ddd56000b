"""PostgreSQL hardened for the security tests: TLS with a throw-away CA, SCRAM passwords, hostssl only.

:func:`hardened` (a context manager) generates a CA and a server certificate for 127.0.0.1 with openssl
under ``<stack>/tls``, turns ``ssl`` on with ``ALTER SYSTEM``, creates the login roles, and puts
``hostssl ... scram-sha-256`` plus ``host ... reject`` lines for them at the top of ``pg_hba.conf``; on
exit it restores ``pg_hba.conf``, resets the settings, drops the roles and reloads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.faults.stack import FaultStack
from tests.support.tls import make_tls_files

LEAST_PRIVILEGE_SQL = Path(__file__).resolve().parents[2] / "sql" / "roles" / "least_privilege.sql"
INGEST_ROLE = "loom_ingest"  # created by sql/roles/least_privilege.sql
FULL_ROLE = "loom_secret_probe"  # a member of the owner: may run migrations


@dataclass(frozen=True)
class Hardened:
    """What the tests need to connect: the CA, a CA that did not sign the server, and the password."""

    stack: FaultStack
    ca: Path
    wrong_ca: Path
    password: str

    def dsn(self, role: str, password: str | None = None, mode: str = "verify-full", ca: Path | None = None) -> str:
        secret = self.password if password is None else password
        return (
            f"postgresql://{role}:{secret}@127.0.0.1:{self.stack.pg_port}/loom"
            f"?sslmode={mode}&sslrootcert={ca or self.ca}"
        )


def _certificates(directory: Path) -> tuple[Path, Path]:
    """The CA and the unrelated CA; the server's key and certificate made readable by PostgreSQL."""
    files = make_tls_files(directory)
    if os.geteuid() == 0:
        shutil.chown(files.server_key, "postgres")
        shutil.chown(files.server_cert, "postgres")
    return files.ca, files.wrong_ca


@contextlib.contextmanager
def _hba_first(stack: FaultStack, lines: list[str]) -> Iterator[None]:
    hba = stack.pg_data / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("\n".join(lines) + "\n" + original)
    try:
        yield
    finally:
        hba.write_text(original)


@contextlib.contextmanager
def hardened(stack: FaultStack) -> Iterator[Hardened]:
    ca, wrong_ca = _certificates(stack.directory / "tls")
    password = "Lp" + secrets.token_urlsafe(24)
    settings = {
        "ssl": "on",
        "ssl_cert_file": str(ca.parent / "server.crt"),
        "ssl_key_file": str(ca.parent / "server.key"),
    }
    roles = f"{INGEST_ROLE},{FULL_ROLE}"
    hba = [f"hostssl loom {roles} 127.0.0.1/32 scram-sha-256", f"host loom {roles} 0.0.0.0/0 reject"]
    try:
        stack.run_script(LEAST_PRIVILEGE_SQL.read_text())
        stack.execute(f"CREATE ROLE {FULL_ROLE} LOGIN IN ROLE loom")
        for role in (INGEST_ROLE, FULL_ROLE):
            stack.execute(f"ALTER ROLE {role} PASSWORD '{password}'")
        for name, value in settings.items():
            stack.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        with _hba_first(stack, hba):
            stack.pg_reload()
            yield Hardened(stack, ca, wrong_ca, password)
    finally:
        for name in settings:
            stack.execute(f"ALTER SYSTEM RESET {name}")
        stack.pg_reload()
        for role in (INGEST_ROLE, FULL_ROLE):
            if stack.execute("SELECT count(*) FROM pg_roles WHERE rolname = $1", role):
                stack.run_script(f"DROP OWNED BY {role}; DROP ROLE {role}")
