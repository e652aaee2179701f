"""What a real line adds around the jig runners (issue 8): steps, work order, metrics, board."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from linehost import __version__
from linehost.config import JigSection, LineConfig, parse_listen
from linehost.errors import ConfigError
from linehost.line.statusboard import StatusBoard
from linehost.line.steps import JigSteps, StepCommand
from linehost.line.workorder import WorkOrder, WorkOrderGate, watch_line
from linehost.observers import AttemptObserver
from linehost.store.audit import Audit
from linehost.tasks import cancel_and_wait

if TYPE_CHECKING:
    from linehost.metrics import LineMetrics
    from linehost.store.store import Store

_log = structlog.get_logger("linehost.app")


def with_work_order(config: LineConfig) -> LineConfig:
    """The config with `[work_order]` vid/pid (when given) in place of `[pki]`'s."""
    wo = config.work_order
    if wo is None or (wo.vid is None and wo.pid is None):
        return config
    pki = config.pki.model_copy(
        update={"vid": wo.vid or config.pki.vid, "pid": wo.pid or config.pki.pid}
    )
    return config.model_copy(update={"pki": pki})


def jig_steps(config: LineConfig, jig: JigSection) -> JigSteps | None:
    """The steps configured for one jig (None when it has none)."""
    steps = config.steps_for(jig)
    cwd = config.source.parent if config.source is not None else None
    pre = post = None
    if steps.pre_command:
        pre = StepCommand("pre", steps.pre_command, steps.pre_timeout, cwd)
    if steps.post_command:
        post = StepCommand("post", steps.post_command, steps.post_timeout, cwd)
    if pre is None and post is None:
        return None
    return JigSteps(pre=pre, post=post, pre_retry=steps.pre_retry, probe=jig.probe)


class LineOperations:
    """The work-order gate, the metrics endpoint and the status board of one `linehost run`."""

    def __init__(self, config: LineConfig, work_order: WorkOrder | None = None) -> None:
        self.config = config
        wo = work_order or (
            WorkOrder(config.work_order.id, config.work_order.quantity)
            if config.work_order is not None
            else None
        )
        self.work_order = wo
        self.gate = WorkOrderGate(wo.id, wo.quantity) if wo is not None else None
        self.metrics: LineMetrics | None = None
        if config.metrics is not None:
            from linehost.metrics import LineMetrics

            self.metrics = LineMetrics(config.line.name)
        self.board: StatusBoard | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, store: Store) -> None:
        """Register the work order, open the endpoint, start the background tasks."""
        config = self.config
        wo = self.work_order
        if wo is not None:
            await store.open_work_order(wo.id, wo.quantity, wo.recorded)
            _log.info(
                "work_order_open",
                work_order=wo.id,
                quantity=wo.quantity,
                cd_sha256=wo.recorded[0],
                firmware_version=wo.firmware_version,
            )
        metrics = self.metrics
        if metrics is not None and config.metrics is not None:
            host, port = parse_listen(config.metrics.listen)
            try:
                metrics.serve(host, port)
            except OSError as exc:
                raise ConfigError(
                    f"metrics.listen: cannot listen on {config.metrics.listen}: {exc.strerror}"
                ) from None
            metrics.info.labels(config.line.name, __version__).set(1)
            _log.info("metrics_listening", listen=config.metrics.listen)
        self.board = StatusBoard(store.engine, work_order=self.gate.id if self.gate else None)
        self._tasks.append(asyncio.create_task(self.board.run(), name="line:status-board"))
        if self.gate is not None or metrics is not None:
            interval = config.metrics.work_order_poll if config.metrics is not None else 5.0
            self._tasks.append(
                asyncio.create_task(
                    watch_line(
                        Audit(store.engine),
                        line=config.line.name,
                        gate=self.gate,
                        on_progress=metrics.work_order if metrics is not None else None,
                        on_outbox=metrics.outbox_depth.set if metrics is not None else None,
                        interval=interval,
                    ),
                    name="line:work-order-watch",
                )
            )

    def observers(self) -> list[AttemptObserver]:
        """The status board and the metrics (when configured), for the line's fan-out."""
        return [x for x in (self.board, self.metrics) if x is not None]

    async def close(self) -> None:
        """Stop the background tasks (the board writes its last rows first)."""
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        if self.metrics is not None:
            self.metrics.close()
