"""Benchmarks for the gateway's hot path (not tests: nothing here runs under pytest).

`python -m bench.run` measures direct-to-upstream against through-the-gateway; see bench/RESULTS.md.
"""
