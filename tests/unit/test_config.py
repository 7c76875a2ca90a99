from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ia_continu.config import Settings


def test_settings_defaults_follow_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("IA_PORT", "IA_HOST", "IA_DATABASE_URL", "IA_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.port == 9000
    assert s.host == "127.0.0.1"
    assert s.mlflow_tracking_uri == "http://localhost:5000"
    assert s.mlflow_experiment == "ia_continu_solution"
    assert s.model_name == "ia_continu_logistic_regression"
    assert s.resolved_database_url == f"sqlite:///{Path('data') / 'ia_continu_solution.db'}"


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IA_PORT", "9100")
    monkeypatch.setenv("IA_MODEL_C", "0.5")
    monkeypatch.setenv("IA_DATA_DIR", "/tmp/x")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.port, s.model_c) == (9100, 0.5)
    assert s.resolved_database_url == "sqlite:////tmp/x/ia_continu_solution.db"


def test_settings_read_dotenv(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("IA_WORKERS=3\nIA_MODEL_SOLVER=liblinear\n")
    s = Settings(_env_file=env)  # type: ignore[call-arg]
    assert s.workers == 3
    assert s.model_solver == "liblinear"


def test_settings_reject_unknown_timezone() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        Settings(_env_file=None, timezone="Mars/Olympus")  # type: ignore[call-arg]


def test_env_example_lists_every_setting() -> None:
    example = (Path(__file__).parents[2] / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"IA_{name.upper()}=" in example, name
