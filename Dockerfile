# syntax=docker/dockerfile:1
# The authz sidecar image: `docker build -t kvs-authz .` (deploy/README.md shows it next to Envoy).
#
# Stage 1 installs the runtime dependencies (read from pyproject.toml, pinned by constraints.txt)
# into a virtualenv and generates the authz.v1 protobuf code; stage 2 copies only that venv and
# the source into a slim image that runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN python -m venv /opt/venv \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > requirements.txt \
 && /opt/venv/bin/pip install -c constraints.txt -r requirements.txt \
 && python -m venv /opt/protoc \
 && /opt/protoc/bin/pip install -c constraints.txt grpcio-tools
COPY protos/ protos/
COPY authz/ authz/
COPY server.py ./
RUN /opt/protoc/bin/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
      protos/authz/v1/authz.proto \
 && /opt/protoc/bin/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/authz/v1/wire.proto \
 && /opt/venv/bin/python -c "import authz.gateway.ext_authz, authz.server.app"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 authz \
 && useradd --system --uid 10001 --gid authz --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin authz \
 && mkdir -p /var/lib/authz /etc/authz \
 && chown authz:authz /var/lib/authz \
 && chmod 700 /var/lib/authz
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/authz /app/authz
COPY --from=build /src/server.py /app/server.py
# The example policies, so that the image runs out of the box; mount your own bundle over it.
COPY examples/bundle/ /etc/authz/bundle/
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AUTHZ_LISTEN=0.0.0.0:50051 \
    AUTHZ_BUNDLE=/etc/authz/bundle \
    AUTHZ_STATE_DIR=/var/lib/authz \
    AUTHZ_PRINCIPAL_FROM=sigv4
USER 10001:10001
EXPOSE 50051
# gRPC health of the decision listener (SERVING once the bundle has loaded).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-m", "authz.server.healthcheck"]
# SIGTERM drains in-flight calls (--drain-grace) before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "server.py"]
