# syntax=docker/dockerfile:1
# One image for every `tidings` subcommand: operator, dispatcher, the source
# adapters the operator creates (`tidings source KIND`), dev and send.
#
#   docker build -t tidings:dev .
#   docker run --rm tidings:dev dispatcher --help
#
# The base is pinned to a Python release; override it with
# --build-arg PYTHON_IMAGE=python:3.11.X-slim-bookworm@sha256:… to pin a digest
# (hack/cluster.sh builds on a Debian image it makes itself: any base with
# python 3.11, its venv module, groupadd and useradd will do).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a virtualenv with exactly the locked dependencies, then tidings --
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# The locked set first (hack/lock.sh writes it from pyproject.toml): every
# file checked against its hash, binary wheels only (a dependency that needed
# a compiler fails here rather than pull one in), nothing unlisted.
COPY requirements.lock build-requirements.lock ./
RUN python -m venv /opt/tidings \
 && /opt/tidings/bin/pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --only-binary=:all: --no-deps -r build-requirements.lock
COPY pyproject.toml README.md ./
COPY api/ api/
COPY dispatcher/ dispatcher/
COPY operator/ operator/
COPY cli/ cli/
# The tidings wheel, built with the locked setuptools (no download), and
# installed without dependencies: `pip check` fails the build if the lock
# does not satisfy pyproject.toml.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/tidings/bin/pip install --no-deps --no-index /wheels/tidings-*.whl \
 && /opt/tidings/bin/pip check \
 && /opt/tidings/bin/pip uninstall --yes pip setuptools

# --- final: the base image, the virtualenv, a non-root user -----------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tidings" \
      org.opencontainers.image.description="Eventing for Kubernetes: operator, dispatcher and source adapters" \
      org.opencontainers.image.licenses="Apache-2.0"
# Read-only root filesystem in the chart: no .pyc writes, logs unbuffered.
ENV PATH=/opt/tidings/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 tidings \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin tidings
COPY --from=build /opt/tidings /opt/tidings
# Numeric, so Kubernetes can verify runAsNonRoot without looking up names.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["tidings"]
CMD ["--help"]
