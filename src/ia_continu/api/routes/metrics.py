"""GET /metrics: the Prometheus text exposition."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

router = APIRouter()


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    tags=["service"],
    responses={200: {"description": "Prometheus text exposition format"}},
)
def metrics(request: Request) -> Response:
    """Requests, latency, predictions, retrains (summed over every worker process), the
    champion and the latest monitoring run (read from the database at each scrape)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    state = getattr(request.app.state, "ia", None)
    body = request.app.state.metrics.render(state.engine if state is not None else None)
    from ia_continu.api.routes.feedback import render_performance_gauges

    body += render_performance_gauges(state)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
