"""Store a served model straight in the database named by the IA_* environment (no
MLflow needed), for the /predict benchmarks. Usage: IA_DATA_DIR=... python bench/predlog_seed.py"""

from __future__ import annotations

from datetime import UTC, datetime

from ia_continu.config import get_settings
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.ml.predictor import LinearModel

try:  # one module per aggregate (db/models.py) since the layout refactor
    from ia_continu.db import models as db_models
except ImportError:  # the baseline tree of bench/feedback.py's /predict A/B predates it
    from ia_continu.db import repository as db_models  # type: ignore[no-redef]


def main() -> None:
    engine = create_db_engine(get_settings().resolved_database_url)
    upgrade_database(engine)
    if db_models.get_active_version(engine) is None:
        model = LinearModel(version="v1", coef=(1.7, -0.9), intercept=0.2)
        record = db_models.ModelRecord(
            version="v1",
            accuracy=0.9,
            training_samples=800,
            created_at=datetime.now(UTC),
            is_active=True,
            parameters=model.to_json(),
        )
        db_models.insert_model(engine, record, activate=True)
    engine.dispose()


if __name__ == "__main__":
    main()
