"""Settings: the only module that reads the environment.

Every setting has the prefix ``IA_`` and may also come from a ``.env`` file in the
working directory. ``.env.example`` lists them all with their defaults.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

VERSION = "2.0.0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IA_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- HTTP server -------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(9000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    log_level: str = "info"
    # Seconds an idle keep-alive connection stays open. Longer than clients' own idle
    # expiry (httpx 5 s, browsers and proxies up to 60 s): at uvicorn's default of 5 s the
    # server closed connections that clients were reusing at that very moment, and the
    # request failed with a reset ("server disconnected without sending a response").
    keep_alive_timeout: int = Field(75, ge=1)

    # --- storage -----------------------------------------------------------------
    data_dir: Path = Path("./data")
    # Empty means sqlite:///<data_dir>/ia_continu_solution.db (see ``resolved_database_url``).
    database_url: str = ""
    db_busy_timeout_ms: int = Field(30_000, ge=0)

    # --- MLflow ------------------------------------------------------------------
    mlflow_tracking_uri: str = "http://localhost:5000"
    mlflow_experiment: str = "ia_continu_solution"
    model_name: str = "ia_continu_logistic_regression"
    # Seconds to wait on one MLflow HTTP call; MLflow's own default retries for minutes.
    mlflow_timeout: float = Field(10.0, gt=0)
    mlflow_max_retries: int = Field(1, ge=0)

    # --- training (scikit-learn LogisticRegression) -------------------------------
    model_c: float = Field(1.0, gt=0, description="LogisticRegression C")
    model_solver: Literal["lbfgs", "liblinear", "newton-cg", "newton-cholesky", "sag", "saga"] = (
        "lbfgs"
    )
    model_max_iter: int = Field(1000, ge=1)
    test_size: float = Field(0.2, gt=0, lt=1)
    random_state: int = 42

    # --- data generation -----------------------------------------------------------
    # IANA name (e.g. Europe/Paris) for the odd-hour drift rule; empty = server local time.
    timezone: str = ""

    # --- serving -------------------------------------------------------------------
    # How often each API process checks which model is active (seconds).
    model_refresh_interval: float = Field(0.5, gt=0)
    # Import scikit-learn/mlflow in a background thread once the API is up, so that the
    # first /retrain does not pay ~5 s of imports (RSS ~95 -> ~315 MB per worker).
    warm_up_ml: bool = True
    warm_up_delay: float = Field(0.5, ge=0, description="seconds after start-up")

    # --- continuous learning (monitoring flow) --------------------------------------
    # Base URL the monitoring flow uses to reach the API's /health.
    api_url: str = "http://127.0.0.1:9000"
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    min_accuracy: float = Field(0.80, ge=0, le=1)
    drift_p_value: float = Field(0.01, gt=0, lt=1)
    psi_threshold: float = Field(0.2, gt=0)
    promotion_margin: float = Field(0.0, ge=-1, le=1)
    monitor_batch_size: int = Field(1000, ge=100, le=100_000)
    monitor_interval: int = Field(3600, ge=10, description="seconds between scheduled runs")
    # Minimum number of logged live predictions before they are compared too.
    min_live_predictions: int = Field(200, ge=10)
    prefect_api_url: str = "http://127.0.0.1:4200/api"
    # Labelled predictions (feedback joined to its prediction) needed since the last run
    # before the flow learns from live traffic instead of a generated batch.
    min_feedback: int = Field(200, ge=1)
    # With no labelled data, generate a batch (demo). Production: false ("no fresh data").
    monitor_generate: bool = True
    # holdout: a challenger is promoted when it beats the champion on its own held-out
    # rows; shadow: it is served in shadow and promoted once it beats the champion on
    # at least IA_MIN_FEEDBACK labelled live rows.
    promote_on: Literal["holdout", "shadow"] = "holdout"

    # --- prediction logging ---------------------------------------------------------
    prediction_log_enabled: bool = True
    prediction_log_queue_size: int = Field(100_000, ge=1)
    prediction_log_flush_interval: float = Field(0.5, gt=0)
    prediction_log_batch_size: int = Field(5_000, ge=1)
    # Score the shadow challenger (newest non-active model registered after the champion)
    # on live traffic beside the champion, in the log's flush thread; never returned.
    shadow: bool = False

    # --- notifications ---------------------------------------------------------------
    discord_webhook_url: SecretStr | None = None
    discord_timeout: float = Field(5.0, gt=0)

    # --- security --------------------------------------------------------------------
    api_keys: SecretStr | None = None  # comma-separated
    api_keys_file: Path | None = None
    protect_predict: bool = False
    allow_anonymous: bool = False
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # POST /datasets only: 10,000 pretty-printed JSON rows reach ~1 MiB.
    max_upload_bytes: int = Field(4_194_304, ge=1024)

    # --- dashboard links ---------------------------------------------------------------
    mlflow_ui_url: str = "http://localhost:5000"
    prefect_ui_url: str = "http://localhost:4200"
    kuma_ui_url: str = "http://localhost:3001"
    dashboard_refresh_seconds: int = Field(10, ge=1)

    # --- Uptime Kuma provisioning (`ia-continu kuma setup`) -------------------------------
    # No default account: the credentials come from options or the environment only.
    kuma_url: str = "http://localhost:3001"
    kuma_username: str | None = None
    kuma_password: SecretStr | None = None
    # The API's base URL as Uptime Kuma reaches it (the compose service name by default).
    kuma_target_url: str = "http://api:9000"
    kuma_timeout: float = Field(10.0, gt=0)

    @field_validator("kuma_username", "kuma_password", mode="before")
    @classmethod
    def _blank_kuma_credential_means_unset(cls, value: object) -> object:
        # `IA_KUMA_PASSWORD=` copied from .env.example is "not given", not an empty password.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        if value:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:  # at start-up rather than on the first /generate
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("api_keys", "api_keys_file", mode="before")
    @classmethod
    def _blank_means_unset(cls, value: object) -> object:
        # IA_API_KEYS="" or IA_API_KEYS_FILE="" (compose passes empty variables) is "no key",
        # not a key "" nor the current directory.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'ia_continu_solution.db'}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def get_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, ``.env`` and explicit overrides."""
    return Settings(**overrides)  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def get_cached_settings() -> Settings:
    return get_settings()


# prometheus_client's own variable (no IA_ prefix): `ia-continu serve` sets it for its workers.
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def get_prometheus_multiproc_dir() -> Path | None:
    """Where the worker processes share their Prometheus metrics, when they do."""
    value = os.environ.get(PROMETHEUS_MULTIPROC_ENV, "")
    return Path(value) if value else None


__all__ = [
    "PROMETHEUS_MULTIPROC_ENV",
    "VERSION",
    "SecretStr",
    "Settings",
    "get_cached_settings",
    "get_prometheus_multiproc_dir",
    "get_settings",
]
