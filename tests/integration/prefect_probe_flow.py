"""A tiny flow for the worker test: importable by module path, like the monitoring flow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow


@flow(name="ia-continu-probe", persist_result=False)
async def probe_flow(marker: str) -> str:
    # Proof that a worker process really ran it, with the deployment's parameters.
    Path(marker).write_text("ran")
    return marker
