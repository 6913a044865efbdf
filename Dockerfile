# syntax=docker/dockerfile:1
# Multi-stage image after LiveKit's agent starter: build with uv, run as a non-root user,
# model files fetched at build time so a starting pod never downloads anything.

FROM python:3.11-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    HOME=/app \
    HF_HOME=/app/.cache/huggingface
WORKDIR /app

FROM base AS build
# No uv cache: HOME is /app, and everything under /app is copied into the runtime image.
ENV UV_NO_CACHE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ python3-dev \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv==0.13.8
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev
COPY agent ./agent
COPY plugins ./plugins
# Silero VAD and the turn detector's files land under /app so the final stage keeps them.
RUN uv run --no-dev python -m agent download-files

FROM base AS runtime
# libportaudio2: LiveKit's console imports sounddevice. Local TTS/STT ship in their wheels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libportaudio2 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && adduser --disabled-password --gecos "" --home /app --uid 10001 appuser
COPY --from=build --chown=appuser:appuser /app /app
USER appuser
ENV PATH="/app/.venv/bin:$PATH" \
    DATA_DIR=/app/data
# 8081: health (/ liveness, /ready readiness); 9100: Prometheus metrics when METRICS_PORT=9100.
EXPOSE 8081 9100
CMD ["python", "-m", "agent", "start"]
