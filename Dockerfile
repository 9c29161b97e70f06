# The gateway image: `mcpgw` with the example upstreams (mcp-server-time, the reference server).
# compose.yaml runs it three ways: `mcpgw ingress`, `mcpgw consume audit`, `mcpgw consume risk`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/mcpgw
COPY pyproject.toml README.md ./
COPY ingress ingress
COPY consumers consumers
COPY schemas schemas
COPY eventlog eventlog
COPY dashboards dashboards
COPY mcpgw mcpgw
COPY examples examples
COPY infra infra
RUN pip install ".[examples]" && useradd --create-home --uid 10001 mcpgw && mkdir -p /var/lib/mcpgw \
    && chown mcpgw /var/lib/mcpgw
USER mcpgw
EXPOSE 8080
ENTRYPOINT ["mcpgw"]
CMD ["--help"]
