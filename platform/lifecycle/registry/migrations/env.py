"""Alembic environment of the registry.

``Registry`` runs migrations from code and hands its connection in
``config.attributes["connection"]``, already inside the transaction that holds the
registry's write lock; the whole upgrade then commits or rolls back as one. From the
``alembic`` command line (developers: ``-x url=...``) a connection is made here.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from qingliang.platform.lifecycle.registry.tables import VERSION_TABLE, Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:////path/registry.sqlite ...")
    from qingliang.platform.lifecycle.registry._db import make_engine, normalize_url

    engine = make_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the registry's migrations run online only (no --sql)")
main()
