# ingestd in a container: the SFTP server on port 2222, all state in the volume
# /var/lib/ingestd, tenants in /etc/ingestd/tenants.d (README.md, "Running as a service").
#   docker build -t ingestd .
#   docker run -d --name ingestd -p 2222:2222 --stop-timeout 60 \
#     -v ingestd-state:/var/lib/ingestd -v ingestd-tenants:/etc/ingestd/tenants.d ingestd
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# What the build needs: pyproject.toml (it names README.md as the readme) and the package.
COPY pyproject.toml README.md /src/
COPY ingestd /src/ingestd
RUN pip install --no-cache-dir /src && rm -rf /src

# A fixed uid, so volumes keep their owner across images; it owns the state and tenants.d
# (`docker exec ingestd ingestd tenant add ...` writes there).
RUN groupadd --system --gid 10001 ingestd \
 && useradd --system --uid 10001 --gid ingestd --home-dir /var/lib/ingestd \
        --no-create-home --shell /usr/sbin/nologin ingestd \
 && install -d -o ingestd -g ingestd -m 0750 /var/lib/ingestd /etc/ingestd/tenants.d

# The container's default configuration (listen 0.0.0.0:2222, loopback never banned so the
# HEALTHCHECK below stays healthy); mount your own over it.
COPY config/ingestd.container.toml /etc/ingestd/ingestd.toml
ENV INGESTD_CONFIG=/etc/ingestd/ingestd.toml \
    STATE_DIRECTORY=/var/lib/ingestd

VOLUME /var/lib/ingestd
EXPOSE 2222
USER ingestd
WORKDIR /var/lib/ingestd

# Healthy when the SFTP server answers with an SSH banner (no tools beyond Python).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import socket, sys; s = socket.create_connection(('127.0.0.1', 2222), timeout=3); sys.exit(0 if s.makefile('rb').read(8) == b'SSH-2.0-' else 1)"]

# `docker run IMAGE` runs the daemon; `docker run IMAGE validate ...` any other command.
ENTRYPOINT ["ingestd"]
CMD ["run"]
