# syntax=docker/dockerfile:1

# Builder and runtime share one pinned base, so /opt/venv/bin/python (a symlink
# to /usr/local/bin/python3) still resolves once the venv is copied across.
# Bump both FROM lines together; tests/test_packaging.py checks they match.

# ---------------------------------------------------------------------------
# builder: a venv at /opt/venv holding the dependencies, then the project wheel
# ---------------------------------------------------------------------------
FROM python:3.11.15-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv

WORKDIR /src

# No pip inside the venv: the base image's pip installs into it with --python,
# so the runtime stage ships no installer.
RUN python -m venv --without-pip "$VIRTUAL_ENV"

# Dependencies in their own layer: it is rebuilt only when pyproject.toml
# changes, not on every source edit. tomllib is stdlib from Python 3.11 on.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' > requirements.txt \
    && pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir --no-compile --requirement requirements.txt

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
FROM python:3.11.15-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="space-pipeline" \
      org.opencontainers.image.description="Kafka partitions to the Space API, in order; commit only after acceptance." \
      org.opencontainers.image.licenses="Apache-2.0"

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
# chart's probes. Stdlib only: the image has no curl or wget.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=4)"]

ENTRYPOINT ["space-pipeline"]
CMD ["run"]
