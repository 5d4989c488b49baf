"""The one place that picks an event-log backend from configuration.

Nothing else in banditrec names a backend's class (DESIGN, "Storage backends"): the API, the
learner, the evaluation and the CLI ask `open_store` for an `EventStore`, so adding a backend
touches this module and the backend alone.

- no URL, or ``sqlite:///path/to/events.db``: the embedded SQLite log (the default);
- ``redis://host:port/db`` (or ``rediss://`` for TLS, ``unix://`` for a socket): the shared
  Redis log that replicas on several hosts learn from together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from banditrec.store import EventStore, StoreError

__all__ = ["describe_store", "open_store"]

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def open_store(
    url: str | None,
    *,
    db_path: str | Path,
    encoding_hash: str,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    prefix: str = "banditrec",
) -> EventStore:
    """Open the event log `url` names (default: the SQLite file `db_path`).

    Parameters
    ----------
    url
        ``None`` or ``sqlite:///<path>`` for SQLite, ``redis://host:port/db`` for Redis.
    db_path
        The SQLite file used when `url` is None.
    encoding_hash
        The feature schema's encoding hash; a log written under another encoding is refused.
    synchronous
        SQLite's durability setting (Redis follows its own AOF setting).
    prefix
        Redis only: every key of the log starts with ``prefix + ":"``.

    Raises
    ------
    StoreError
        For an unknown scheme, or a log that cannot be opened.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> store = open_store(None, db_path=pathlib.Path(tempfile.mkdtemp()) / "e.db",
    ...                    encoding_hash="abc")
    >>> store.last_offset()
    0
    >>> store.close()
    """
    scheme = urlsplit(url).scheme if url else "sqlite"
    if scheme == "sqlite":
        from banditrec.store.sqlite import SQLiteEventStore

        path = Path(db_path) if not url else _sqlite_path(url)
        return SQLiteEventStore(path, encoding_hash, synchronous)
    if scheme in _REDIS_SCHEMES:
        from banditrec.store.redis import RedisEventStore

        assert url is not None
        return RedisEventStore.from_url(url, encoding_hash, prefix=prefix)
    raise StoreError(
        f"The store URL {describe_store(url, db_path)!r} has an unknown scheme {scheme!r}; "
        "use sqlite:///path/to/events.db or redis://host:port/db."
    )


def describe_store(url: str | None, db_path: str | Path) -> str:
    """The log's location for messages, without a password that the URL may hold."""
    if not url:
        return str(db_path)
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return parts.geturl()


def _sqlite_path(url: str) -> Path:
    # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy reads them.
    path = url.split("://", 1)[1]
    if not path.startswith("/"):
        raise StoreError(f"The SQLite URL {url!r} must look like sqlite:///path/to/events.db.")
    return Path(path[1:])
