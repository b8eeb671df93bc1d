"""Fixtures shared by every test folder."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A superuser DSN of a PostgreSQL server for this session (see tests/_postgres.py):
    ``QINGLIANG_TEST_PG_DSN``, or a throwaway local server on 127.0.0.1; skips without
    either. Tests that write should use their own database (``postgres_database``)."""
    from _postgres import PostgresUnavailable, postgres_server

    try:
        server = postgres_server()
        dsn = server.__enter__()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield dsn
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def postgres_database(postgres_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The DSN of a fresh, empty database for this test, dropped afterwards."""
    from _postgres import create_database, drop_database

    node = request.node.nodeid
    digest = hashlib.sha1(node.encode()).hexdigest()[:8]
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + "_" + digest
    dsn = create_database(postgres_dsn, name)
    yield dsn
    drop_database(postgres_dsn, name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database URL for a store's conformance tests, once per backend: ``sqlite``, a file
    in a fresh folder; ``postgres``, a fresh database (``postgres_database``; skipped with
    the reason where no PostgreSQL can run)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'store.sqlite'}"
    dsn: str = request.getfixturevalue("postgres_database")
    return dsn
