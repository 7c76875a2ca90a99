"""Persistence: engine, tables, one module per aggregate (the only SQL) and Alembic migrations."""
