"""http: the aiohttp adapters agents and operators talk to (MCP endpoints, legacy SSE, health)."""
