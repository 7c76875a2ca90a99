# One image for every Python service of compose.yaml: the API (`ia-continu serve`, the
# default command), the MLflow server (`mlflow server`), the Prefect server
# (`prefect server start`), the Prefect worker (`ia-continu worker start`) and the
# one-shot Uptime Kuma provisioning (`ia-continu kuma setup`).
#
#   docker build -t ia-continu:2.0.0 .      (or: docker compose build)

# Both stages must use the same Python: the virtual environment built in the first one
# points at /usr/local/bin/python3.11 of this base image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
# builder: resolve nothing, install exactly uv.lock into /app/.venv, bytecode compiled
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# uv from PyPI (pinned), like `make install` does when uv is missing.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# Dependencies first: this layer is rebuilt only when pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --compile-bytecode

# Then the project itself, as a regular (non-editable) install: the runtime stage needs
# /app/.venv only, not the sources.
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --compile-bytecode

# The test suites that wheels ship (scikit-learn, SciPy, NumPy, pandas, ...): no service
# imports them. MLflow is left whole (its `tests` directory holds assistant skill files).
RUN find /app/.venv/lib -type d -name tests -not -path '*/site-packages/mlflow/*' -prune \
        -exec rm -rf {} +

# ---------------------------------------------------------------------------------------
# runtime: the virtual environment and a non-root user, nothing else
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed uid/gid so that volume ownership is stable across rebuilds. The data
# directories are created here, owned by that user, because a named volume mounted on
# an existing directory starts with that directory's owner: without this, every volume
# would be root-owned and unwritable.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && mkdir -p /app/data/models /mlflow/artifacts /prefect \
    && chown -R app:app /app/data /mlflow /prefect

# Root-owned and read-only for the app user: the code cannot be modified at run time.
COPY --from=builder /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IA_HOST=0.0.0.0 \
    IA_PORT=9000 \
    IA_DATA_DIR=/app/data \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_DISABLE_TELEMETRY=true

WORKDIR /app
USER app

EXPOSE 9000 5000 4200

# The API's liveness; compose gives mlflow, prefect-server and prefect-worker their own.
# Python rather than curl: the slim image has no curl, and urlopen fails (exit 1) on
# refused connections, timeouts and any non-2xx status.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('IA_PORT', '9000'), timeout=4)"]

CMD ["ia-continu", "serve"]
