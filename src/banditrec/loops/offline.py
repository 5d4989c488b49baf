"""A named loop's log partition and schema, for the offline commands (``--loop NAME``).

`banditrec evaluate`, `export` and `forget-user` read one log. With ``--loop NAME`` they
find the loop as the server does: its definition in the loop catalog kept beside the
default loop's log (the ``loops`` table of the SQLite file, or the ``<prefix>:loops`` hash
in Redis), its settings from `loop_settings` (so its log is ``loops/<name>/events.db``
beside the default file, or the Redis keys under ``<store_prefix>:loop:<name>:``, and its
archive ``<archive_dir>/loops/<name>``), its schema from its definition.

Reading the catalog never writes: the SQLite file is opened read-only (lock-free, as an
immutable file, when no process has it open: not even ``-wal`` or ``-shm`` files are created
beside it; see `banditrec.store.sqlite_reader`), and Redis is asked with ``HGET``/``HGETALL``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

import orjson

from banditrec.config import Settings
from banditrec.errors import LoopError
from banditrec.loops.definition import DEFAULT_LOOP, LoopRecord, check_loop_name, loop_settings
from banditrec.store import StoreError
from banditrec.store.factory import describe_store

__all__ = ["catalog_records", "loop_of", "offline_loop_settings"]


def catalog_records(settings: Settings) -> list[LoopRecord]:
    """Every named loop's definition in the catalog beside `settings`' default log.

    An SQLite log that does not exist, or was never served with loops, has none.

    Raises
    ------
    StoreError
        For a catalog that cannot be read (a file that is not SQLite, Redis unreachable).
    """
    if settings.store_url and not settings.store_url.startswith("sqlite"):
        return _redis_records(settings.store_url, settings.store_prefix)
    return _sqlite_records(_sqlite_path(settings))


def offline_loop_settings(base: Settings, name: str) -> Settings:
    """The complete settings of the loop `name` on a server configured by `base`.

    Raises
    ------
    LoopError
        For a name that cannot be a loop's, a loop the catalog does not hold (the message
        names it and the loops it holds), or a definition that can no longer serve.
    StoreError
        For a catalog that cannot be read.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> base = Settings(db_path=pathlib.Path(tempfile.mkdtemp()) / "events.db")
    >>> offline_loop_settings(base, "onboarding")
    Traceback (most recent call last):
    ...
    banditrec.errors.LoopError: No loop is named 'onboarding' in the loop catalog of ...
    """
    check_loop_name(name)
    records = {record.name: record for record in catalog_records(base)}
    record = records.get(name)
    if record is None:
        where = describe_store(base.store_url, base.db_path)
        held = ", ".join(map(repr, records)) or "none"
        raise LoopError(
            f"No loop is named {name!r} in the loop catalog of {where} (it holds {held}). "
            "A deleted loop's log stays in loops/<name>/ beside the event log: read it with "
            "--log and --schema."
        )
    return loop_settings(base, record)


def _sqlite_path(settings: Settings) -> Path:
    url = settings.store_url
    if url:  # sqlite:///relative/path or sqlite:////absolute/path, as `open_store` reads it
        return Path(url.split("://", 1)[1][1:])
    return settings.db_path


def _sqlite_records(path: Path) -> list[LoopRecord]:
    if not path.is_file():
        return []
    in_use = any(path.with_name(path.name + end).exists() for end in ("-wal", "-journal"))
    mode = "mode=ro" if in_use else "immutable=1"
    try:
        db = sqlite3.connect(f"file:{quote(str(path.absolute()))}?{mode}", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open the event log {path}: {exc}.") from None
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "loops" not in tables:
            return []
        rows = db.execute("SELECT name, definition FROM loops ORDER BY name").fetchall()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"Cannot read the loop catalog in {path}: {exc}.") from None
    finally:
        db.close()
    return [LoopRecord.from_dict(name, orjson.loads(data)) for name, data in rows]


def _redis_records(url: str, prefix: str) -> list[LoopRecord]:
    import redis

    from banditrec.loops.catalog import RedisCatalog

    client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        return RedisCatalog(client, prefix + ":").records()
    except redis.RedisError as exc:
        where = describe_store(url, "")
        raise StoreError(f"Cannot read the loop catalog in {where}: {exc}.") from None
    finally:
        client.close()


def loop_of(name: str | None) -> str | None:
    """`name` unless it is the default loop's (``--loop default`` is no option at all)."""
    return None if name in (None, DEFAULT_LOOP) else name
