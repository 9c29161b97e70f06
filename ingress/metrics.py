"""Prometheus metrics of one gateway: counts taken from its audit events, and its state at scrape time.

`CountingSink` wraps the event sink the recorder writes to, so every event handed to the sink is
counted exactly once, in one place, by the same facts the audit trail holds (event type, method,
server, outcome, and the latency of final answers). Everything else (upstream states, sessions,
blocks...) is read by `GatewayState` only when Prometheus scrapes: it costs the hot path nothing.

Each gateway has its own `CollectorRegistry` (`GatewayMetrics.registry`); `register` is the hook
for collectors the process adds (the in-process consumers of `mcpgw up`), and `add_refresher` for
what such a collector must read asynchronously before a scrape exports (Kafka's end offsets, which
take a broker round trip a synchronous collector cannot await): /metrics awaits `refresh` first.

Label values are bounded whatever agents send: a method the MCP wire types (or the gateway's own
admin and decision traffic) do not name, and a server the config does not name, count as `(other)`.
"""

from __future__ import annotations

import typing
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import mcp_types
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ingress.sink import EventSink
from ingress.upstreams.base import UpstreamState
from schemas.decisions import DecisionAction, DecisionScope
from schemas.events import EventType, GatewayEvent, Outcome

if TYPE_CHECKING:
    from ingress.gateway import Gateway

OTHER = "(other)"
REFUSAL_OUTCOMES = (Outcome.BLOCKED, Outcome.UNAUTHENTICATED, Outcome.RATE_LIMITED, Outcome.REFUSED,
                    Outcome.FORBIDDEN)
# Latency bucket bounds in µs (the unit of `latency_us`), exposed in seconds. The gateway adds well
# under a millisecond; upstream tools take anywhere up to the request timeout.
LATENCY_BOUNDS_US = (500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
                     2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000)
# Distinct raw (type, method, server, outcome) keys remembered; past this, novel keys are resolved
# each time instead of growing the cache (only junk traffic gets there).
MAX_CACHED_KEYS = 4096


def _wire_methods() -> frozenset[str]:
    names: set[str] = set()
    for value in vars(mcp_types).values():
        field = getattr(value, "model_fields", {}).get("method") if isinstance(value, type) else None
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            names.update(str(arg) for arg in typing.get_args(field.annotation))
    return frozenset(names)


# The gateway's own traffic: the admin API (ingress/http/admin.py), /metrics refusals, and the
# decision feed's `decision_applied` events. "" is lifecycle events, which have no method.
GATEWAY_METHODS = frozenset({"", "admin/decisions", "admin/decisions/list", "admin/audit/query",
                             "admin/alerts/grafana", "metrics", "decisions/rebuild",
                             *(f"decisions/{action}" for action in DecisionAction)})
KNOWN_METHODS = _wire_methods() | GATEWAY_METHODS

Labels = tuple[str, str, str, str]  # event_type, method, server, outcome


class Latency:
    """One server's tools/call latency histogram: a count per bucket of `LATENCY_BOUNDS_US`, then +Inf."""

    __slots__ = ("buckets", "sum_us")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BOUNDS_US) + 1)
        self.sum_us = 0


class Cell:
    """The count of one label set, and where the latency of its events goes (final tools/call answers)."""

    __slots__ = ("count", "latency")

    def __init__(self, latency: Latency | None) -> None:
        self.count = 0
        self.latency = latency


class CountingSink:
    """An `EventSink` that counts the events it hands to `inner`.

    Counted when handed over, before durability is awaited: a caller cancelled meanwhile does not
    un-record them. Events the sink refuses stay counted and are also counted in `failed_events`.

    Plain ints, not prometheus_client children: a child's `inc()` takes a lock (about 1 µs against
    0.2 µs here, per event, four events per tool call), and nothing but the event loop touches these.
    """

    def __init__(self, inner: EventSink, servers: Iterable[str]) -> None:
        self.inner = inner
        self.servers = frozenset(servers) | {""}
        self.failed_events = 0
        self.cells: dict[Labels, Cell] = {}  # by bounded labels: what is exposed
        self.latencies: dict[str, Latency] = {}
        self._by_key: dict[tuple[EventType, str, str, Outcome], Cell] = {}

    async def record(self, *events: GatewayEvent) -> None:
        by_key = self._by_key
        for event in events:
            cell = by_key.get((event.event_type, event.method, event.server, event.outcome))
            if cell is None:
                cell = self._resolve(event)
            cell.count += 1
            latency = cell.latency
            if latency is not None and event.latency_us is not None:
                latency.buckets[bisect_left(LATENCY_BOUNDS_US, event.latency_us)] += 1
                latency.sum_us += event.latency_us
        try:
            await self.inner.record(*events)
        except Exception:
            self.failed_events += len(events)
            raise

    async def close(self) -> None:
        await self.inner.close()

    def _resolve(self, event: GatewayEvent) -> Cell:
        method = event.method if event.method in KNOWN_METHODS else OTHER
        server = event.server if event.server in self.servers else OTHER
        labels = (event.event_type.value, method, server, event.outcome.value)
        cell = self.cells.get(labels)
        if cell is None:
            latency = None
            # Final answers carry `latency_us`; progress and other interim messages have none.
            if event.event_type is EventType.AGENT_MESSAGE_SENT and method == "tools/call":
                latency = self.latencies.setdefault(server, Latency())
            cell = self.cells[labels] = Cell(latency)
        if len(self._by_key) < MAX_CACHED_KEYS:
            self._by_key[(event.event_type, event.method, event.server, event.outcome)] = cell
        return cell


class EventCounts(Collector):
    """What `CountingSink` counted, as Prometheus families."""

    def __init__(self, sink: CountingSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "mcpgw_messages", "Audit events recorded, by event type, method, server and outcome (each message "
            "crossing the gateway is one event per hop).", labels=["event_type", "method", "server", "outcome"])
        refusals: Counter[str] = Counter({outcome.value: 0 for outcome in REFUSAL_OUTCOMES})
        refusal_types = (EventType.MESSAGE_REFUSED.value, EventType.AGENT_MESSAGE_SENT.value)
        for labels, cell in list(self.sink.cells.items()):
            messages.add_metric(labels, cell.count)
            if labels[0] in refusal_types and labels[3] in refusals:
                refusals[labels[3]] += cell.count
        yield messages
        refused = CounterMetricFamily(
            "mcpgw_refusals", "Messages the gateway refused or answered itself with a refusal, by outcome.",
            labels=["outcome"])
        for outcome, count in refusals.items():
            refused.add_metric([outcome], count)
        yield refused
        latency = HistogramMetricFamily(
            "mcpgw_tool_call_duration_seconds", "Time from an agent's tools/call to the gateway's final answer, "
            "by server (\"\" for calls refused before one was chosen).", labels=["server"])
        for server, hist in list(self.sink.latencies.items()):
            latency.add_metric([server], _cumulative(hist.buckets), hist.sum_us / 1e6)
        yield latency
        yield CounterMetricFamily(
            "mcpgw_event_sink_failures", "Events the event sink refused: their actions did not happen (or, in "
            "async audit mode, happened unrecorded).", value=self.sink.failed_events)


def _cumulative(buckets: Sequence[int]) -> list[tuple[str, float]]:
    bounds = [*(str(bound / 1e6) for bound in LATENCY_BOUNDS_US), "+Inf"]
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(bounds, buckets, strict=True):
        total += count
        out.append((bound, total))
    return out


class GatewayState(Collector):
    """The gateway's state, read at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        yield InfoMetricFamily("mcpgw_gateway", "This gateway process.",
                               value={"instance": gateway.recorder.instance_id, "audit_mode": gateway.recorder.mode})
        states = GaugeMetricFamily("mcpgw_upstream_state", "1 for each upstream's current state, 0 for the others.",
                                   labels=["server", "state"])
        for name, upstream in list(gateway.upstreams.items()):
            current = upstream.status.state
            for state in UpstreamState:
                states.add_metric([name, state.value], 1.0 if state is current else 0.0)
        yield states
        yield GaugeMetricFamily("mcpgw_sessions", "Open legacy-era agent sessions.", value=len(gateway.sessions))
        yield GaugeMetricFamily("mcpgw_listeners", "Open subscriptions/listen streams of modern-era agents.",
                                value=len(gateway.listeners))
        yield GaugeMetricFamily("mcpgw_held_calls", "Calls held for an agent's input (multi-round-trip requests).",
                                value=len(gateway.held_calls))
        in_force = Counter(decision.scope for decision in gateway.decisions.active())
        blocks = GaugeMetricFamily("mcpgw_blocks_active", "Block decisions in force, by scope.", labels=["scope"])
        for scope in DecisionScope:
            blocks.add_metric([scope.value], in_force[scope])
        yield blocks
        yield CounterMetricFamily("mcpgw_decisions_applied", "Decisions folded into the blocklist since start "
                                  "(the rebuild from the decisions topic included).", value=gateway.decisions.applied)


class GatewayMetrics:
    """One gateway's registry; `sink` is the counting wrapper the gateway's recorder must write to."""

    def __init__(self, gateway: Gateway, sink: EventSink) -> None:
        self.registry = CollectorRegistry()
        self.sink = CountingSink(sink, gateway.config.servers)
        for collector in (EventCounts(self.sink), GatewayState(gateway)):
            self.registry.register(collector)
        # Process-wide facts (CPU, memory, GC), in every gateway's registry so each /metrics is whole.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def register(self, collector: Collector) -> None:
        """Expose `collector` on this gateway's /metrics too."""
        self.registry.register(collector)

    def add_refresher(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Await `refresh` before each export; it must bound its own wait and not raise."""
        self._refreshers.append(refresh)

    async def refresh(self) -> None:
        """Run the registered refreshers (none by default: then a scrape awaits nothing)."""
        for refresh in self._refreshers:
            await refresh()
