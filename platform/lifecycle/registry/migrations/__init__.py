"""Alembic migrations of the registry schema (run from code by ``Registry``; see
docs/registry.md for adding a revision). A package so that wheels carry the scripts."""
