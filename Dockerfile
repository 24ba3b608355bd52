# trace-worker image: `docker build -t trace-worker .` then `docker run trace-worker` runs `trace-worker run`.
# Other commands on the same image: `docker run trace-worker devserver --host 0.0.0.0 --port 50051`,
# `docker run trace-worker demo`. Settings are TRACE_WORKER_* environment variables (docs/CONFIGURATION.md).
#
# Two stages: `build` makes a virtualenv at /opt/venv from requirements.lock (the exact versions CI
# tests) and the project; `runtime` copies only that virtualenv onto a clean slim base, so no pip
# cache, wheel cache or build tool reaches the final image. Every runtime dependency ships manylinux
# wheels for x86_64 and aarch64, so no compiler is needed in either stage.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first (their own layer, rebuilt only when the lock or pyproject changes). The lock also
# pins dev tools; using it as constraints installs just the runtime dependency tree at locked versions.
COPY requirements.lock pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/runtime-requirements.txt \
    && pip install -c requirements.lock -r /tmp/runtime-requirements.txt
# Then the project itself, without touching the dependencies installed above. Its build backend is
# pinned: pyproject's build-system asks for setuptools>=69, and pip's isolated build would fetch
# whatever setuptools is newest that day. So the exact version is installed here, the project is
# built with --no-build-isolation against it, and both setuptools and pip leave the venv afterwards.
ARG SETUPTOOLS_VERSION=80.9.0
COPY README.md ./
COPY contracts ./contracts
COPY worker ./worker
RUN pip install "setuptools==${SETUPTOOLS_VERSION}" \
    && pip install --no-deps --no-build-isolation . \
    && python -m compileall -q /opt/venv/lib \
    && pip uninstall -y setuptools pip \
    && rm -rf /src/build /tmp/runtime-requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=10001
LABEL org.opencontainers.image.title="trace-worker" \
      org.opencontainers.image.description="Perfetto traces from Micromegas telemetry, on demand, from a Redis stream" \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode is compiled at build time: the root filesystem can be mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRACE_WORKER_HTTP_HOST=0.0.0.0 \
    TRACE_WORKER_HTTP_PORT=8080 \
    TRACE_WORKER_BLOB_URL=file:///data/traces
RUN groupadd --system --gid ${APP_UID} app \
    && useradd --system --uid ${APP_UID} --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data/traces \
    && chown -R app:app /data
COPY --from=build /opt/venv /opt/venv
USER ${APP_UID}:${APP_UID}
WORKDIR /home/app
VOLUME ["/data"]
EXPOSE 8080
# Liveness only: /readyz turns 503 while Redis or Flight SQL is away, which is not a reason to restart.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('TRACE_WORKER_HTTP_PORT', '8080'), timeout=4)"]
# The worker handles SIGTERM itself (drain, then release jobs), so it runs as PID 1 without a shell.
ENTRYPOINT ["trace-worker"]
CMD ["run"]
