"""The loop learning from real traffic, on SQLite and PostgreSQL, with a real MLflow
server: labelled predictions (prediction + feedback rows written directly, as the API
and POST /feedback would) as the run's data, uploads, generation only when allowed,
the watermark, shadow promotion; and one Prefect flow run with the Discord stub."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ia_continu.config import Settings
from ia_continu.db import datasets as db_datasets
from ia_continu.db import model_files
from ia_continu.db import models as db_models
from ia_continu.db import monitoring_runs as db_runs
from ia_continu.db.tables import feedback, predictions
from ia_continu.ml.data import Dataset, generate_dataset
from ia_continu.ml.evaluate import compute_metrics
from ia_continu.services import lifecycle
from ia_continu.services import monitoring as service
from tests.conftest import LiveServer
from tests.integration.discord_stub import DiscordStub

pytestmark = pytest.mark.slow

NOW = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)  # an even hour: generated batches are not drifted
EVEN, ODD = 2, 5  # the champion learns the even parity; traffic drifts to the odd one


@pytest.fixture
def stub() -> Iterator[DiscordStub]:
    with DiscordStub() as s:
        yield s


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings],
    database_url: str,
    mlflow_server: str,
    stub: DiscordStub,
) -> Settings:
    return make_settings(
        database_url=database_url,
        mlflow_tracking_uri=mlflow_server,
        discord_webhook_url=stub.url,
        discord_timeout=0.5,
        warm_up_ml=False,
        monitor_generate=False,
        min_feedback=200,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database

    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def champion(settings: Settings, engine: Engine) -> db_models.ModelRecord:
    record = db_datasets.insert_dataset(
        engine, generate_dataset(1000, hour=EVEN, seed=1), created_at=NOW
    )
    return lifecycle.retrain(
        settings=settings, engine=engine, generation_id=record.generation_id, now=NOW
    ).record


def _run(settings: Settings, engine: Engine, **overrides: Any) -> db_runs.MonitoringRunRecord:
    outcome = asyncio.run(
        service.execute_run(
            settings=settings.model_copy(update=overrides),
            engine=engine,
            check_health=False,
            notify=False,
            clock=lambda: NOW,
        )
    )
    assert outcome.run.status != "failed", outcome.run.error
    return outcome.run


def _log_traffic(
    engine: Engine,
    data: Dataset,
    *,
    served: db_models.ModelRecord,
    shadow: db_models.ModelRecord | None = None,
    received_at: datetime = NOW,
    with_feedback: bool = True,
    with_predictions: bool = True,
    ids: list[str] | None = None,
) -> list[str]:
    """Prediction rows as the API logs them (served model, optional shadow score) and
    feedback rows carrying the true label."""
    ids = ids or [str(uuid.uuid4()) for _ in range(len(data))]
    classes, confidences = model_files.model_from_record(served).predict_batch(data.features)
    shadow_classes = (
        model_files.model_from_record(shadow).predict_batch(data.features)[0] if shadow else None
    )
    with engine.begin() as conn:
        if with_predictions:
            conn.execute(
                predictions.insert(),
                [
                    {
                        "created_at": NOW,
                        "feature1": float(x[0]),
                        "feature2": float(x[1]),
                        "prediction": int(classes[i]),
                        "confidence": float(confidences[i]),
                        "model_version": served.version,
                        "prediction_id": ids[i],
                        "shadow_version": shadow.version if shadow else None,
                        "shadow_prediction": (
                            int(shadow_classes[i]) if shadow_classes is not None else None
                        ),
                        "shadow_confidence": 0.9 if shadow else None,
                    }
                    for i, x in enumerate(data.features)
                ],
            )
        if with_feedback:
            conn.execute(
                feedback.insert(),
                [
                    {"prediction_id": ids[i], "label": int(t), "received_at": received_at}
                    for i, t in enumerate(data.target)
                ],
            )
    return ids


def _accuracy(record: db_models.ModelRecord, data: Dataset) -> float:
    predicted, _ = model_files.model_from_record(record).predict_batch(data.features)
    return compute_metrics(data.target, predicted).accuracy


def _dataset_count(engine: Engine) -> int:
    return len(db_datasets.list_datasets(engine, limit=1000))


def test_labelled_traffic_drives_the_run_and_the_challenger_serves_drift_better(
    settings: Settings, engine: Engine, champion: db_models.ModelRecord
) -> None:
    traffic = generate_dataset(800, hour=ODD, seed=21)
    _log_traffic(engine, traffic, served=champion)

    run = _run(settings, engine)

    assert (run.data_source, run.labelled_samples) == ("feedback", 800)
    assert (run.status, run.decision, run.drift_detected) == ("drift", "promoted", True)
    assert run.accuracy is not None and run.reference_accuracy is not None
    assert run.accuracy < run.reference_accuracy - settings.max_accuracy_drop  # realized
    assert run.live_drift is not None and "live feature1 KS p-value" in (run.reason or "")
    # The labelled rows are a dataset of their own: the challenger is reproducible.
    assert run.generation_id is not None
    record = db_datasets.get_dataset_record(engine, run.generation_id)
    assert record is not None and (record.source, record.samples_count) == ("feedback", 800)
    stored = db_datasets.load_dataset(engine, run.generation_id)
    assert stored is not None
    np.testing.assert_array_equal(stored.features, traffic.features)
    np.testing.assert_array_equal(stored.target, traffic.target)
    new = db_models.get_model(engine, run.new_version or "")
    assert new is not None and new.generation_id == run.generation_id
    assert db_models.get_active_version(engine) == new.version
    # On fresh drifted data the promoted model is measurably better than the old champion.
    fresh = generate_dataset(5000, hour=ODD + 2, seed=99)
    assert _accuracy(new, fresh) > _accuracy(champion, fresh) + 0.03

    # Nothing new: the same pairs are not used twice, and nothing is generated.
    count = _dataset_count(engine)
    idle = _run(settings, engine)
    assert (idle.data_source, idle.labelled_samples, idle.decision) == (None, 0, "none")
    assert "no fresh labelled data" in (idle.reason or "")
    assert _dataset_count(engine) == count

    # Feedback received before the last run for predictions flushed only now still counts.
    late = generate_dataset(250, hour=ODD, seed=22)
    ids = _log_traffic(
        engine, late, served=new, received_at=NOW - timedelta(hours=1), with_predictions=False
    )
    assert _run(settings, engine).data_source is None  # not joined yet
    _log_traffic(engine, late, served=new, ids=ids, with_feedback=False)
    joined = _run(settings, engine)
    assert (joined.data_source, joined.labelled_samples) == ("feedback", 250)


def test_uploads_count_as_fresh_data_and_generation_happens_only_when_allowed(
    settings: Settings, engine: Engine, champion: db_models.ModelRecord
) -> None:
    _log_traffic(engine, generate_dataset(150, hour=EVEN, seed=31), served=champion)

    nothing = _run(settings, engine)  # 150 < IA_MIN_FEEDBACK, IA_MONITOR_GENERATE=false
    assert (nothing.data_source, nothing.labelled_samples, nothing.status) == (None, 0, "ok")
    assert "150 labelled predictions since the last run" in (nothing.reason or "")
    assert nothing.generation_id is None and nothing.accuracy is None

    generated = _run(settings, engine, monitor_generate=True)
    assert generated.data_source == "generated" and generated.generation_id is not None
    record = db_datasets.get_dataset_record(engine, generated.generation_id)
    assert record is not None and record.source == "monitor"

    upload = db_datasets.insert_dataset(
        engine, generate_dataset(400, hour=EVEN, seed=32), created_at=NOW, source="upload"
    )
    count = _dataset_count(engine)
    uploaded = _run(settings, engine, monitor_generate=True)
    assert (uploaded.data_source, uploaded.generation_id) == ("upload", upload.generation_id)
    assert uploaded.labelled_samples == 400 and uploaded.accuracy is not None
    assert _dataset_count(engine) == count  # labelled data there: nothing generated

    # The 150 earlier pairs were kept: 60 more reach the minimum.
    _log_traffic(engine, generate_dataset(60, hour=EVEN, seed=33), served=champion)
    learned = _run(settings, engine, monitor_generate=True)
    assert (learned.data_source, learned.labelled_samples) == ("feedback", 210)
    assert learned.decision == "none"  # same parity as the champion


def test_shadow_challenger_is_promoted_only_when_it_beats_the_champion_on_shared_rows(
    settings: Settings, engine: Engine, champion: db_models.ModelRecord
) -> None:
    shadow_settings = settings.model_copy(update={"promote_on": "shadow"})
    drifted = db_datasets.insert_dataset(
        engine, generate_dataset(1000, hour=ODD, seed=41), created_at=NOW
    )
    v2 = lifecycle.retrain(
        settings=settings, engine=engine, generation_id=drifted.generation_id, activate=False
    ).record
    assert db_models.get_shadow_model(engine) == v2

    _log_traffic(engine, generate_dataset(150, hour=ODD, seed=42), served=champion, shadow=v2)
    # The drifted dataset just stored is fresh data: the run wants a retrain, but the
    # challenger under measurement is neither promoted nor replaced.
    waiting = _run(shadow_settings, engine)
    assert waiting.decision == "kept_champion" and waiting.new_version is None
    assert db_models.get_active_version(engine) == champion.version
    assert len(db_models.list_models(engine)) == 2
    assert f"shadow challenger {v2.version}: 150 labelled live rows, 50 more needed" in (
        waiting.reason or ""
    )

    _log_traffic(engine, generate_dataset(150, hour=ODD, seed=43), served=champion, shadow=v2)
    promoted = _run(shadow_settings, engine)
    assert (promoted.decision, promoted.new_version) == ("promoted", v2.version)
    assert promoted.data_source == "feedback"  # 300 labelled rows: the batch too
    assert promoted.new_accuracy is not None and promoted.champion_accuracy_on_holdout is not None
    assert promoted.new_accuracy > promoted.champion_accuracy_on_holdout
    assert db_models.get_active_version(engine) == v2.version
    assert db_models.get_shadow_model(engine) is None

    # A worse challenger (the old parity) in shadow on the drifted traffic: kept out.
    even = db_datasets.insert_dataset(
        engine, generate_dataset(1000, hour=EVEN, seed=44), created_at=NOW
    )
    v3 = lifecycle.retrain(
        settings=settings, engine=engine, generation_id=even.generation_id, activate=False
    ).record
    _log_traffic(engine, generate_dataset(300, hour=ODD, seed=45), served=v2, shadow=v3)
    kept = _run(shadow_settings, engine)
    assert kept.decision != "promoted" and db_models.get_active_version(engine) == v2.version
    assert f"shadow challenger {v3.version}" in (kept.reason or "")
    assert "not promoted" in (kept.reason or "")


def test_shadow_mode_keeps_a_retrained_challenger_out_of_service(
    settings: Settings, engine: Engine, champion: db_models.ModelRecord
) -> None:
    _log_traffic(engine, generate_dataset(600, hour=ODD, seed=51), served=champion)
    run = _run(settings, engine, promote_on="shadow")
    assert (run.status, run.decision, run.data_source) == ("drift", "kept_champion", "feedback")
    assert run.new_version is not None and "serves in shadow" in (run.reason or "")
    assert db_models.get_active_version(engine) == champion.version
    shadow = db_models.get_shadow_model(engine)
    assert shadow is not None and shadow.version == run.new_version


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_flow_run_records_the_source_and_discord_shows_it(
    prefect_harness: None,
    settings: Settings,
    engine: Engine,
    champion: db_models.ModelRecord,
    live_server: LiveServer,
    stub: DiscordStub,
) -> None:
    from ia_continu.flows import flow_settings, monitoring_flow

    _log_traffic(engine, generate_dataset(300, hour=ODD, seed=61), served=champion)
    with flow_settings(settings.model_copy(update={"api_url": live_server.url})):
        state = asyncio.run(monitoring_flow(return_state=True))
    assert state.is_completed()
    run = db_runs.get_latest_monitoring_run(engine)
    assert run is not None and (run.data_source, run.labelled_samples) == ("feedback", 300)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT data_source, labelled_samples FROM monitoring_runs"))
        assert row.one() == ("feedback", 300)
    (embed,) = stub.embeds()
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Données"] == "trafic étiqueté (feedback) · 300 lignes"
    import httpx

    latest = httpx.get(f"{live_server.url}/monitoring/latest", timeout=10).json()
    assert (latest["data_source"], latest["labelled_samples"]) == ("feedback", 300)
