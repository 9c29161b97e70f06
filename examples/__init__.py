"""Example MCP servers used by the README config, tests and benchmarks."""
