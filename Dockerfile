# Sentinel Monitor daemon image; docker-compose.yml runs it. It has not been
# built in CI, where no Docker engine is available.
FROM python:3.11-slim

# torch from PyPI is the CUDA build (several GB). For a CPU-only image, pass
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu so torch
# comes from PyTorch's CPU wheel index before the project installs.
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SENTINEL_MODEL__CACHE_DIR=/var/cache/sentinel-monitor/models

RUN useradd --create-home --uid 10001 sentinel \
    && mkdir -p /var/cache/sentinel-monitor/models \
    && chown -R sentinel:sentinel /var/cache/sentinel-monitor

WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY consumers ./consumers
COPY storage ./storage
COPY migrations ./migrations
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
    && pip install .

USER sentinel
WORKDIR /home/sentinel
# The HTTP API of `run` (api.port); set api.host to 0.0.0.0 to reach it from outside.
EXPOSE 8686
ENTRYPOINT ["sentinel-monitor"]
CMD ["run"]
