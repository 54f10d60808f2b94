# syntax=docker/dockerfile:1

# Builder and runtime share one pinned base, so /opt/venv/bin/python (a symlink
# to /usr/local/bin/python3) still resolves once the venv is copied across.
# The tag says which Python; the digest (the tag's multi-platform image index, as
# docker-library/repo-info recorded it) is what is pulled, so Debian updates to
# the tag change nothing here until the digest is bumped. To bump: read the new
# index digest with `docker buildx imagetools inspect python:3.11.<n>-slim-bookworm`
# and change both FROM lines and the base.digest label together
# (tests/test_packaging.py checks they match).

# ---------------------------------------------------------------------------
# builder: a venv at /opt/venv holding the dependencies, then the project wheel
# ---------------------------------------------------------------------------
FROM python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3 AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv

WORKDIR /src

# No pip inside the venv: the base image's pip installs into it with --python,
# so the runtime stage ships no installer.
RUN python -m venv --without-pip "$VIRTUAL_ENV"

# Dependencies in their own layer: it is rebuilt only when pyproject.toml or
# constraints.txt changes, not on every source edit. tomllib is stdlib from
# Python 3.11 on. constraints.txt pins the whole runtime closure to the versions
# the tests ran (`make constraints` writes it), so two builds install the same.
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' > requirements.txt \
    && pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir --no-compile --requirement requirements.txt --constraint constraints.txt

# The project itself: build its wheel, install it without touching the
# dependencies, check the set is consistent, then compile all bytecode once
# (hash-based pycs stay valid whatever mtimes the COPY below leaves behind).
COPY README.md ./
COPY pipeline/ pipeline/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir dist . \
    && pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir --no-compile --no-deps dist/*.whl \
    && pip --python "$VIRTUAL_ENV/bin/python" check \
    && "$VIRTUAL_ENV/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$VIRTUAL_ENV"

# ---------------------------------------------------------------------------
# runtime: the venv only; no compilers, no pip, no caches; non-root; read-only
# root filesystem friendly (nothing is written outside /tmp at run time)
# ---------------------------------------------------------------------------
FROM python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3 AS runtime

# `docker build --build-arg VERSION=... --build-arg REVISION=$(git rev-parse HEAD)`;
# VERSION defaults to pyproject.toml's (tests/test_packaging.py keeps them in step).
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE_URL=https://github.com/space-pipeline/space-pipeline

LABEL org.opencontainers.image.title="space-pipeline" \
      org.opencontainers.image.description="Kafka partitions to the Space API, in order; commit only after acceptance." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.15-slim-bookworm" \
      org.opencontainers.image.base.digest="sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3"

# Drop the base image's installers (nothing installs at run time), compile the
# standard library's bytecode (the base image deletes its .pyc files, and a
# read-only root filesystem could never cache them), and add the fixed
# unprivileged user that the Helm chart's runAsUser/runAsGroup match.
RUN python -m pip uninstall --yes pip setuptools wheel \
    && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /usr/local/lib/python3.11 \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

USER 10001:10001

# Prometheus metrics and /healthz.
EXPOSE 9400

# The worker drains in-flight requests and commits on SIGTERM (Kubernetes'
# default); say so explicitly.
STOPSIGNAL SIGTERM

# For docker/compose users only: Kubernetes ignores HEALTHCHECK and uses the
# chart's probes. Stdlib only: the image has no curl or wget. The port follows
# PIPELINE_METRICS_PORT as the stage does (9400 when unset or empty), read by
# Python itself: no shell form, no quoting; urlopen fails on any answer but 2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('PIPELINE_METRICS_PORT') or '9400'; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["space-pipeline"]
CMD ["run"]
