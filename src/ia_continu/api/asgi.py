"""Entry point for uvicorn workers (each builds its own app from the environment)."""

from __future__ import annotations

import logging

from fastapi import FastAPI


def create_app_from_env() -> FastAPI:
    from ia_continu.api.app import create_app
    from ia_continu.config import get_settings

    settings = get_settings()
    # With --workers N each worker is a freshly spawned interpreter: the logging set up by
    # `ia-continu serve` does not reach it, and the app's INFO lines (retrains, served
    # model) were lost while its warnings came out bare, without time or level.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    return create_app(settings)
