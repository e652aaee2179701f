"""Prometheus metrics of a line host (`[metrics] listen`), cheap enough for the hot path.

Every series is created once per jig (label children bound up front), so a jig reports an
attempt with a handful of dictionary-free increments and observations.
"""

from __future__ import annotations

from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from linehost.observers import DB_ASSIGN, DB_END_ATTEMPT, Observer
from linehost.protocol.outcomes import AssignmentStatus, JigState, Outcome
from linehost.records import AttemptEnd, AttemptStart, JigStatus

NAMESPACE: Final = "linehost"
#: Seconds: a device's whole attempt, from its UID line to its result (steps included).
ATTEMPT_BUCKETS: Final = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300)
#: Seconds the device waits on the host: CSR read -> DAC written (issuer + database).
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)
STEP_BUCKETS: Final = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

#: Every metric name this module exports (the Grafana dashboard test checks against it).
METRIC_NAMES: Final = frozenset(
    {
        "linehost_attempts_total",
        "linehost_devices_confirmed_total",
        "linehost_attempt_duration_seconds",
        "linehost_host_latency_seconds",
        "linehost_host_wait_seconds",
        "linehost_issuer_latency_seconds",
        "linehost_db_commit_seconds",
        "linehost_step_duration_seconds",
        "linehost_steps_total",
        "linehost_outbox_depth",
        "linehost_jig_state",
        "linehost_work_order_quantity",
        "linehost_work_order_devices",
        "linehost_work_order_claimed",
        "linehost_host_info",
        "linehost_crl_seconds_to_next_update",
    }
)


class LineMetrics(Observer):
    """The registry of one line host and the series in it; an observer of its jigs."""

    def __init__(self, line: str, registry: CollectorRegistry | None = None) -> None:
        self.line = line
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        jig = ["station", "jig"]
        self.attempts = Counter(
            "linehost_attempts", "Attempts ended, by outcome", [*jig, "outcome"], registry=r
        )
        self.confirmed = Counter(
            "linehost_devices_confirmed", "Devices whose DAC was confirmed (finish:000)", jig,
            registry=r,
        )  # fmt: skip
        self.attempt_duration = Histogram(
            "linehost_attempt_duration_seconds", "UID line to result, post step included", jig,
            buckets=ATTEMPT_BUCKETS, registry=r,
        )  # fmt: skip
        self.host_latency = Histogram(
            "linehost_host_latency_seconds",
            "Host-added latency: CSR read to DAC written (issuer, database, port)",
            jig, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # The host's own queue: a CSR read while the loop works for other jigs waits here. It
        # grows when the line PC is short of CPU (many jigs handing in CSRs at once).
        self.host_wait = Histogram(
            "linehost_host_wait_seconds",
            "CSR read until the host begins checking it (other jigs' work ahead on the loop)",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.issuer_latency = Histogram(
            "linehost_issuer_latency_seconds", "Time the issuer took for one DAC", jig,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.db_commit = Histogram(
            "linehost_db_commit_seconds",
            "Store call until durably committed (group commit included), by operation",
            ["operation"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_duration = Histogram(
            "linehost_step_duration_seconds", "pre/post command run time", [*jig, "step"],
            buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.steps = Counter(
            "linehost_steps", "pre/post commands run, by result", [*jig, "step", "result"],
            registry=r,
        )  # fmt: skip
        self.outbox_depth = Gauge(
            "linehost_outbox_depth", "Results messages not yet accepted by the broker",
            registry=r,
        )  # fmt: skip
        self.jig_state = Gauge(
            "linehost_jig_state", "1 for the state each jig is in, 0 for the others",
            [*jig, "state"], registry=r,
        )  # fmt: skip
        self.wo_quantity = Gauge(
            "linehost_work_order_quantity", "Devices the work order asks for", ["work_order"],
            registry=r,
        )  # fmt: skip
        self.wo_devices = Gauge(
            "linehost_work_order_devices",
            "Devices of the work order by assignment status (all hosts, from the database)",
            ["work_order", "status"], registry=r,
        )  # fmt: skip
        self.wo_claimed = Gauge(
            "linehost_work_order_claimed", "Work-order slots taken by live assignments",
            ["work_order"], registry=r,
        )  # fmt: skip
        self.info = Gauge("linehost_host_info", "This line host", ["line", "version"], registry=r)
        self.crl_to_next_update = Gauge(
            "linehost_crl_seconds_to_next_update",
            "Seconds until the nextUpdate of the CRL this host keeps (NaN: none signed yet)",
            registry=r,
        )  # fmt: skip
        self.crl_to_next_update.set(float("nan"))
        self.db_assign = self.db_commit.labels(DB_ASSIGN)
        self.db_end = self.db_commit.labels(DB_END_ATTEMPT)
        self._db = {DB_ASSIGN: self.db_assign, DB_END_ATTEMPT: self.db_end}
        self._jigs: dict[tuple[str, str], JigMetrics] = {}
        self._server: WSGIServer | None = None

    def jig(self, station: str, jig: str) -> JigMetrics:
        """The bound series of one jig (created once)."""
        key = (station, jig)
        found = self._jigs.get(key)
        if found is None:
            found = self._jigs[key] = JigMetrics(self, station, jig)
        return found

    # --- AttemptObserver ---------------------------------------------------------------------

    def jig_changed(self, status: JigStatus) -> None:
        """Move the jig's state gauge."""
        self.jig(status.station, status.jig).set_state(status.state)

    def attempt_ended(self, start: AttemptStart, end: AttemptEnd) -> None:
        """Count the outcome, time the attempt, count a confirmed DAC."""
        seconds = (end.ended_at - start.started_at).total_seconds()
        confirmed = end.assignment_status is AssignmentStatus.CONFIRMED
        self.jig(start.station, start.jig).attempt_ended(end.outcome, seconds, confirmed)

    def key_taken_up(self, start: AttemptStart, seconds: float) -> None:
        """The wait for the host's event loop before a CSR is checked."""
        self.host_wait.observe(seconds)

    def dac_written(self, start: AttemptStart, seconds: float) -> None:
        """Host-added latency: CSR read to DAC written."""
        self.jig(start.station, start.jig).host_latency(seconds)

    def issuer_answered(self, start: AttemptStart, seconds: float) -> None:
        """The issuer's time for one DAC."""
        self.jig(start.station, start.jig).issuer_latency(seconds)

    def database_committed(self, start: AttemptStart, operation: str, seconds: float) -> None:
        """A store call until committed, by operation."""
        histogram = self._db.get(operation)
        if histogram is not None:
            histogram.observe(seconds)

    def step_ran(self, status: JigStatus, step: str, ok: bool, seconds: float) -> None:
        """A pre/post step's result and run time."""
        self.jig(status.station, status.jig).step(step, ok, seconds)

    # --- the endpoint ------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP endpoint (a daemon thread of prometheus-client) on host:port."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        """Stop the HTTP endpoint (when serving)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def work_order(self, progress: dict[str, object]) -> None:
        """Set the work-order gauges from `Audit.work_order_progress`."""
        wo = str(progress["work_order"])
        quantity, claimed = progress.get("quantity"), progress.get("claimed")
        if isinstance(quantity, int):
            self.wo_quantity.labels(wo).set(quantity)
        if isinstance(claimed, int):
            self.wo_claimed.labels(wo).set(claimed)
        statuses = progress.get("assignments")
        if isinstance(statuses, dict):
            for status in ("issued", "confirmed", "failed", "unknown", "superseded"):
                self.wo_devices.labels(wo, status).set(int(statuses.get(status, 0)))


class JigMetrics:
    """One jig's series, bound once (LineMetrics calls these per device)."""

    def __init__(self, parent: LineMetrics, station: str, jig: str) -> None:
        self._parent = parent
        self._attempts = {o: parent.attempts.labels(station, jig, o.value) for o in Outcome}
        self._confirmed = parent.confirmed.labels(station, jig)
        self._duration = parent.attempt_duration.labels(station, jig)
        self._host_latency = parent.host_latency.labels(station, jig)
        self._issuer = parent.issuer_latency.labels(station, jig)
        self._states = {s: parent.jig_state.labels(station, jig, s.value) for s in JigState}
        self._steps = {
            (step, result): parent.steps.labels(station, jig, step, result)
            for step in ("pre", "post")
            for result in ("ok", "failed")
        }
        self._step_time = {s: parent.step_duration.labels(station, jig, s) for s in ("pre", "post")}
        self._state: JigState | None = None
        self.db_assign = parent.db_assign

    def attempt_ended(self, outcome: Outcome, seconds: float, confirmed: bool) -> None:
        self._attempts[outcome].inc()
        self._duration.observe(seconds)
        if confirmed:
            self._confirmed.inc()

    def host_latency(self, seconds: float) -> None:
        self._host_latency.observe(seconds)

    def issuer_latency(self, seconds: float) -> None:
        self._issuer.observe(seconds)

    def step(self, step: str, ok: bool, seconds: float) -> None:
        self._steps[step, "ok" if ok else "failed"].inc()
        self._step_time[step].observe(seconds)

    def set_state(self, state: JigState) -> None:
        if state is self._state:
            return
        if self._state is not None:
            self._states[self._state].set(0)
        self._states[state].set(1)
        self._state = state
