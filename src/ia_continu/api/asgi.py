"""Entry point for uvicorn workers (each builds its own app from the environment)."""

from __future__ import annotations

from fastapi import FastAPI


def create_app_from_env() -> FastAPI:
    from ia_continu.api.app import create_app

    return create_app()
