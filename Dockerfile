# One image for the API, the Celery worker and migrations (see compose.yaml).
#
#   docker build -t daikon .
#   docker build -t daikon --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" .
FROM python:3.11-slim

WORKDIR /app

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    HF_HOME=/home/daikon/.cache/huggingface \
    DAIKON_DATA_DIR=/var/lib/daikon

# Pin torch first, in its own layer: an unpinned torch (or one left for the project's
# dependencies to resolve) can pull a different build and several GB of CUDA wheels. Pick the
# build the image is for with --index-url: a CUDA build matching the host driver for GPU
# workers, or the CPU build for a small API-only image. The project's range (<2.14) accepts it.
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install --no-cache-dir ${TORCH_SPEC}

# The distribution installs only the client package (daikon/) and, with the worker extra, every
# library the server needs (the server extra included); it needs no server code to build, so the
# libraries' layer survives edits to the server's code.
COPY pyproject.toml README.md ./
COPY daikon ./daikon
RUN pip install --no-cache-dir '.[worker]'
# The server is an application run from this tree, not an installed package: its packages are
# imported from /app (PYTHONPATH, so gunicorn, celery and alembic find them whatever their cwd).
ENV PYTHONPATH=/app
COPY alembic.ini gunicorn.conf.py ./
COPY api ./api
COPY worker ./worker
COPY db ./db
COPY server ./server
COPY shapeworld ./shapeworld
COPY training ./training
COPY migrations ./migrations
# The embedded shapes models (a few MB); a real deployment points DAIKON_MODEL elsewhere.
COPY models ./models
ENV DAIKON_MODEL=/app/models/shapes-sd \
    DAIKON_CLIP_MODEL=/app/models/shapes-clip

# Run as a non-root user. HF_HOME (model downloads) and DAIKON_DATA_DIR (SQLite, local images
# when no external services are configured) are writable by it.
RUN useradd --create-home --uid 10001 --user-group daikon \
    && mkdir -p "$HF_HOME" "$DAIKON_DATA_DIR" \
    && chown -R daikon:daikon /home/daikon/.cache "$DAIKON_DATA_DIR"
USER daikon

EXPOSE 8000

# The API. The worker and migrations override the command:
#   celery -A worker.main worker --concurrency 1 --loglevel INFO   (one per GPU; its queues:
#       DAIKON_WORKER_MODELS; prefork, which enforces time limits: see docs/deployment.md)
#   celery -A worker.webhooks.main worker --pool threads --queues daikon.webhooks --loglevel INFO
#   alembic upgrade head
# Threads per process, slow-client handling: gunicorn.conf.py (copied above).
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "4", "api:create_app()"]
