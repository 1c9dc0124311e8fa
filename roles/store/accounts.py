"""The gateways' account on the store: a scram-sha-256 verifier made on the control machine from
the stack's secret password (PostgreSQL never sees the password itself), the SQL that sets it,
and the password file the gateways read."""

from __future__ import annotations

import base64
import hashlib
import hmac

from podium.plan.components import STORE_PASSWORD
from podium.secrets import StackSecrets

__all__ = ["STORE_PASSWORD", "account_sql", "passfile", "scram_verifier", "stack_verifier"]

# The stack's secrets (0600 on the control machine) for the gateways' store account.
STORE_SALT = "store-scram-salt"
# PostgreSQL's own default for the verifiers it makes.
ITERATIONS = 4096


def scram_verifier(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    """The verifier PostgreSQL keeps for a scram-sha-256 password (RFC 5802, RFC 7677).

    Example::

        scram_verifier("pencil", b"salt")  # 'SCRAM-SHA-256$4096:c2FsdA==$…:…'
    """
    # The stack's passwords are URL-safe ASCII, which SASLprep leaves as it is.
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def stack_verifier(stack: str) -> str:
    """The verifier of the stack's store password; the same on every run (its salt is kept), so
    a deploy that changed nothing writes nothing."""
    secrets = StackSecrets(stack)
    return scram_verifier(secrets.token(STORE_PASSWORD), secrets.token(STORE_SALT, 16).encode())


def account_sql(database: str, user: str, verifier: str) -> str:
    """psql input that makes the account and its database once and sets the password each time."""
    return (
        "-- Written by Podium (role store): the gateways' account and database.\n"
        f"SELECT 'CREATE ROLE {user} LOGIN' WHERE NOT EXISTS "
        f"(SELECT FROM pg_roles WHERE rolname = '{user}')\\gexec\n"
        f"ALTER ROLE {user} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{verifier}';\n"
        f"SELECT 'CREATE DATABASE {database} OWNER {user}' WHERE NOT EXISTS "
        f"(SELECT FROM pg_database WHERE datname = '{database}')\\gexec\n"
        f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;\n"
    )


def passfile(address: str, port: int, database: str, user: str, password: str) -> str:
    """A libpq password file with the one line the gateway's DSN matches."""

    def field(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:")

    return f"{field(address)}:{port}:{field(database)}:{field(user)}:{field(password)}\n"
