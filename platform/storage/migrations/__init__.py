"""Alembic revisions of the platform's stores, one folder per store (docs/storage.md).

Each folder's ``versions/`` holds plain revision modules, run from code by
:func:`qingliang.platform.storage.database.open_database` (no ``env.py``). A revision is
self-contained (it never imports the store's module) and may branch on the dialect.
"""
