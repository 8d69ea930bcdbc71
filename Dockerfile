# One image for every Moat service. The service is chosen by CMD:
#   docker run moat services.ingress | services.scanner | services.delivery | services.api
#   docker run moat moat.migrate
# (default: services.api). All settings come from MOAT_* environment variables and/or
# the YAML file named by MOAT_CONFIG; see moat/settings.py.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and fsGroup can match it.
RUN groupadd --system --gid 10001 moat \
    && useradd --system --uid 10001 --gid moat --home-dir /var/lib/moat \
       --no-create-home --shell /usr/sbin/nologin moat

# unar extracts compressed rar attachments for the scanner (docs/checks/attachments.md); without
# it a rar is judged by its headers only (ARCHIVE_OPAQUE).
RUN apt-get update \
    && apt-get install -y --no-install-recommends unar \
    && rm -rf /var/lib/apt/lists/*

# Only what the build needs (README.md is the package's readme).
WORKDIR /tmp/build
COPY pyproject.toml README.md ./
COPY moat/ moat/
COPY services/ services/
RUN pip install --no-cache-dir . \
    && rm -rf /tmp/build

# /var/lib/moat: working directory (relative defaults such as var/tls/ for the API's
# self-signed certificate land here). /var/spool/moat: the spool, the raw messages on disk;
# mount ONE volume shared by all services here. Created owned by moat so that a fresh named
# volume mounted on it inherits that ownership.
RUN mkdir -p /var/lib/moat /var/spool/moat \
    && chown moat:moat /var/lib/moat /var/spool/moat
WORKDIR /var/lib/moat
ENV MOAT_SPOOL_DIR=/var/spool/moat

USER 10001:10001

# 2525: SMTP (services.ingress), 8443: HTTPS API (services.api). Both listen on loopback by
# default: set MOAT_SMTP__LISTEN=0.0.0.0:2525 / MOAT_API__LISTEN=0.0.0.0:8443 in containers.
EXPOSE 2525 8443

ENTRYPOINT ["python", "-m"]
CMD ["services.api"]
