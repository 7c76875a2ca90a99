"""Start-up skips alembic when the schema is already at head; the cheap check agrees
with alembic itself."""

from __future__ import annotations

from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import (
    _MIGRATIONS,
    current_revision,
    head_revisions,
    is_at_head,
    upgrade_database,
)


def test_head_revisions_match_alembic_script_directory() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    assert head_revisions() == set(ScriptDirectory.from_config(cfg).get_heads())


def test_is_at_head_only_after_upgrade(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        assert not is_at_head(engine)  # empty database
        upgrade_database(engine, revision="0001")
        assert not is_at_head(engine)  # behind
        upgrade_database(engine)
        assert is_at_head(engine)
        assert {current_revision(engine)} == head_revisions()
        upgrade_database(engine)  # the fast path: nothing to do, no error
        assert is_at_head(engine)
    finally:
        engine.dispose()
