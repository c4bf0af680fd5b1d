# syntax=docker/dockerfile:1
# The authz sidecar image: `docker build -t kvs-authz .` (deploy/README.md shows it next to Envoy).
#
# Safe by default: the image serves no policies and holds no keys of its own. Started without a bundle
# mounted at /etc/authz/bundle it exits (status 2) with a message saying what to mount; the example
# bundle (published example keys) is served only with the demo switch, AUTHZ_DEMO=1. It listens on
# 127.0.0.1 only: Envoy runs in the same network namespace (a Kubernetes pod, or compose's
# `network_mode: service:authz`), and nothing else can reach the decision port, which also issues
# AssumeRole credentials. deploy/README.md says why and how to change it.
#
# Stage 1 installs the runtime dependencies (read from pyproject.toml, pinned by constraints.txt)
# into a virtualenv, then the package itself (its build generates the authz.v1 protobuf code and
# installs the `authz` command); stage 2 copies only that virtualenv into a slim image that runs as
# an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# The runtime dependencies and the `fleet` extra's (psycopg, cryptography): one image for a single sidecar
# and for a member of a fleet (--store).
RUN python -m venv /opt/venv \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['fleet']))" > requirements.txt \
 && /opt/venv/bin/pip install -c constraints.txt -r requirements.txt
COPY setup.py MANIFEST.in README.md CHANGELOG.md ./
COPY protos/ protos/
COPY authz/ authz/
# --no-deps: the dependencies are the pinned ones above. The build (setup.py) runs protoc.
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/python -c "import authz.server.ext_authz, authz.server.app, authz.v1.authz_pb2, psycopg, cryptography" \
 && /opt/venv/bin/authz --help > /dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 authz \
 && useradd --system --uid 10001 --gid authz --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin authz \
 && mkdir -p /var/lib/authz \
 && chown authz:authz /var/lib/authz \
 && chmod 700 /var/lib/authz
COPY --from=build /opt/venv /opt/venv
# The example bundle, outside the served path: only `AUTHZ_DEMO=1` (--demo) serves it.
COPY examples/bundle/ /opt/venv/share/kvs-authz/examples/bundle/
WORKDIR /var/lib/authz
# No AUTHZ_BUNDLE default that exists: /etc/authz/bundle is where your bundle is mounted (a Secret in
# Kubernetes: it holds access keys). The state directory keeps AssumeRole sessions and admin changes.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AUTHZ_LISTEN=127.0.0.1:50051 \
    AUTHZ_BUNDLE=/etc/authz/bundle \
    AUTHZ_STATE_DIR=/var/lib/authz \
    AUTHZ_PRINCIPAL_FROM=sigv4
USER 10001:10001
# No EXPOSE: the decision port is on loopback, for Envoy in the same network namespace only.
# gRPC health of the decision listener, SERVING once a policy set has loaded; it reads the same
# AUTHZ_LISTEN and AUTHZ_TLS_* settings as the server (mutual TLS: AUTHZ_HEALTHCHECK_CERT/_KEY).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --start-interval=1s --retries=3 \
  CMD ["python", "-m", "authz.server.healthcheck"]
# SIGTERM drains in-flight calls (--drain-grace, AUTHZ_DRAIN_GRACE, 10 s by default) before exiting:
# give the container a longer stop timeout than that (compose: stop_grace_period).
STOPSIGNAL SIGTERM
# Any other `authz` command runs in its place: docker run --rm -v "$PWD/bundle:/b:ro" IMAGE authz validate /b
CMD ["authz", "serve"]
