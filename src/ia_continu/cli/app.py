"""The ``ia-continu`` command line."""

from __future__ import annotations

import logging

import typer

from ia_continu.config import Settings, get_settings

app = typer.Typer(
    name="ia-continu",
    help="Continuous-learning ML service: serve, generate, retrain, monitor.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _settings(**overrides: object) -> Settings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    return get_settings(**clean)
