"""Persistence: engine, tables, repository (the only SQL) and Alembic migrations."""
