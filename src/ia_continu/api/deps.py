"""FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request

from ia_continu.api.state import AppState


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.ia
    return state
