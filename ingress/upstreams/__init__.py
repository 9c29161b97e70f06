"""upstreams: connectors to MCP servers (stdio processes, Streamable HTTP, SSE)."""
