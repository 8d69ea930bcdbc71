# syntax=docker/dockerfile:1
# One image for every Moat service; the command picks the service:
#   docker run moat services.ingress | services.scanner | services.delivery | services.api
#   docker run moat moat.migrate          (the one-shot database migration)
# (default: services.api). All settings come from MOAT_* environment variables and/or the YAML
# file named by MOAT_CONFIG; see moat/settings.py and moat.example.yaml.
#
# Two stages: "build" installs Moat and its dependencies into a virtualenv (pip, wheels and any
# compiler a source build would need stay there); the final stage is python:3.11-slim with that
# virtualenv copied in, the one Debian tool the scanner runs (unar), and a non-root user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/moat
WORKDIR /src
# Only what the build needs (README.md is the package's readme). The dev extras (pytest, moto,
# linters) are not installed: the image carries what the services run, nothing else. Compiled
# ahead: with a read-only root file system nothing could write the bytecode at run time
# (olefile2.py is Python 2, never imported).
COPY pyproject.toml README.md ./
COPY moat/ moat/
COPY services/ services/
RUN /opt/moat/bin/pip install --no-compile . \
    && /opt/moat/bin/pip uninstall --yes pip setuptools wheel \
    && /opt/moat/bin/python -m compileall -q -x 'olefile2\.py' /opt/moat/lib \
    && find /opt/moat -name 'tests' -type d -path '*site-packages/*/tests' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/moat/bin:$PATH

# unar extracts compressed rar attachments for the scanner (docs/checks/attachments.md); without
# it a rar is judged by its headers only (ARCHIVE_OPAQUE). Debian's version of the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends unar \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 moat \
    && useradd --system --uid 10001 --gid moat --home-dir /var/lib/moat \
       --no-create-home --shell /usr/sbin/nologin moat \
    && mkdir -p /var/lib/moat /var/spool/moat \
    && chown moat:moat /var/lib/moat /var/spool/moat
# A fixed numeric uid/gid (above), so Kubernetes' runAsNonRoot can verify it and fsGroup can
# match it. /var/lib/moat: the working directory (relative defaults such as var/tls/ for the
# API's self-signed certificate land here; mount an emptyDir on it with a read-only root file
# system). /var/spool/moat: the local message store (store.backend: local); mount ONE volume
# shared by all services there, or use store.backend: s3 and mount nothing.

COPY --from=build /opt/moat /opt/moat

WORKDIR /var/lib/moat
ENV MOAT_SPOOL_DIR=/var/spool/moat
USER 10001:10001

# 2525: SMTP (services.ingress), 8443: HTTPS API (services.api); 9101-9103: the small HTTP
# port of scanner, delivery and ingress (/healthz, /readyz, /metrics). The listeners bind
# loopback by default: set MOAT_SMTP__LISTEN=0.0.0.0:2525 / MOAT_API__LISTEN=0.0.0.0:8443.
EXPOSE 2525 8443 9101 9102 9103

# Whichever service this container runs (services/healthcheck.py reads PID 1's command line).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "services.healthcheck"]

ENTRYPOINT ["python", "-m"]
CMD ["services.api"]
