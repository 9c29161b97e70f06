"""The floor of a strict c=1 call as bench/floor_report.py computes it from a run's per-round p50s."""

from __future__ import annotations

import pytest

from bench.disk_floor import FloorSample
from bench.floor_report import call_floor, disk_floor, disk_floor_line, relay_line

P50S = {"direct": [0.5, 0.6, 0.7], "relay": [0.7, 0.9, 0.8], "gw_single": [2.0, 2.4, 2.2]}
LABELS = {"direct": "direct", "relay": "bare relay", "gw_single": "gateway /servers/fast/mcp"}


def test_the_floor_is_the_relay_hop_plus_two_durable_appends_per_round() -> None:
    floor = call_floor([0.3, 0.4, 0.2], P50S)
    # Per round: relay Δ (0.2, 0.3, 0.1) + twice (0.3, 0.4, 0.2) = 0.8, 1.1, 0.5.
    assert floor["call_floor_ms"] == pytest.approx(0.8)
    # Gateway Δ (1.5, 1.8, 1.5) minus those: 0.7, 0.7, 1.0.
    assert floor["beyond_floor_ms"] == {"gw_single": pytest.approx(0.7)}


def test_device_counts_per_sync_and_unknown_counts() -> None:
    known = disk_floor([FloorSample(0.3, 100, 263, 100, 0, 20, 20)] * 3, P50S)
    assert (known["writes_per_sync"], known["flushes_per_sync"]) == (pytest.approx(2.63), pytest.approx(1.0))
    unknown = disk_floor([FloorSample(0.3, 100, 163, 100), FloorSample(0.3, 100)], {"direct": [0.5, 0.6]})
    assert unknown["writes_per_sync"] is None and unknown["beyond_floor_ms"] == {}
    assert "device writes per write+fdatasync: **n/a**, flushes **n/a**" in disk_floor_line(unknown, LABELS)[0]
    line = disk_floor_line(known, LABELS)[0]
    assert "**2.63**, flushes **1.00**" in line and "counts 1.00 writes, the cache flush's own, so 1.63 are" in line


def test_the_relay_line() -> None:
    cells = [{"target": "relay", "concurrency": 1, "p50_delta_paired_median_ms": 0.21, "gateway_cpu_ms_per_call": 0.1}]
    assert "adds **+0.210 ms at c=1" in relay_line(cells)[0]
    assert relay_line([]) == []
