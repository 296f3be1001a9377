"""Connections to the target that never leak its password.

The target URL carries credentials, and libpq's errors quote it: every connection to the
target goes through ``connect_target``, and every message or metadata value that names the
target goes through ``redacted`` (host, port and database only).
"""

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

TARGET_URL = "The target database URL"


class TargetError(RuntimeError):
    """The target cannot be used (a malformed URL, a failed connection); the message names at
    most its host, port and database, as it ends up in Dagster's event log and the UI."""


class TargetUnreachable(TargetError):
    """The connection to the target failed (perhaps a server still restarting): a run started
    by Dagster tries again, while a malformed URL (a plain TargetError) never mends by itself.
    (A wrong password is retried too: psycopg's connect errors carry no SQLSTATE to tell it
    from a server that is starting up or shutting down.)"""


def _malformed(problem: str, name: str = TARGET_URL) -> TargetError:
    return TargetError(
        f"{name} is malformed: {problem}. Its text is not shown because it may hold a password."
    )


def refuse_stray_at(url: str, name: str = TARGET_URL) -> None:
    """Refuse a URL with an ``@`` after its user:password part: libpq (and SQLAlchemy, for
    Dagster's storage) takes the text after the first ``@`` as the host, or after a ``/`` as
    the database, and its errors would show the rest of an unescaped password as a host name."""
    authority, slash, rest = url.partition("://")[2].partition("/")
    if authority.count("@") > 1 or (slash and "@" in rest):
        raise _malformed(
            "an '@' outside user:password (percent-encode it in a password as %40)", name
        )


def _parsed(url: str) -> dict[str, str]:
    """The URL's parameters. libpq's own parse errors quote the URL, password included, so
    they are replaced by a message without its text (``from None``: no chained traceback
    carries it either)."""
    refuse_stray_at(url)
    try:
        return conninfo_to_dict(url)
    except Exception:
        raise _malformed(
            "libpq cannot parse it; expected postgresql://user:password@host:port/dbname, "
            "with reserved characters of the password percent-encoded"
        ) from None


def redacted(url: str) -> str:
    """A URL fit for logs and metadata: host, port and database, never credentials."""
    params = _parsed(url)
    return make_conninfo(**{k: params[k] for k in ("host", "port", "dbname") if k in params})


def connect_target(url: str, **options: str) -> psycopg.Connection:
    """``psycopg.connect`` (autocommit, libpq ``options`` such as application_name), whose
    errors may quote the URL: re-raised naming host, port and database only, with the server's
    reason stripped of the password."""
    shown = redacted(url)
    try:
        return psycopg.connect(url, autocommit=True, **options)
    except Exception as error:
        reason = str(error).strip()
        password = _parsed(url).get("password")
        for secret in (url, password):
            if secret:
                reason = reason.replace(secret, "***")
        raise TargetUnreachable(f"Cannot connect to the target ({shown}): {reason}") from None
