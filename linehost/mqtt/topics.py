"""The topic tree of contracts.md (host status, jig state, results) and its additions (work
order, outbox depth, the host's CRL, alarms), per line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

HOST_STATUS: Final = "host/status"
JIG_STATE: Final = "state"
RESULTS: Final = "results"
WORK_ORDER: Final = "workorder"
OUTBOX: Final = "host/outbox"
HOST_CRL: Final = "host/crl"
ALARMS: Final = "alarms"

TopicKind = Literal["host", "jig", "results", "workorder", "outbox", "crl", "alarms"]


@dataclass(frozen=True, slots=True)
class LineTopics:
    """The topics one line publishes to."""

    prefix: str
    line: str

    @property
    def host_status(self) -> str:
        """Retained, QoS 1: online/offline (also the Will)."""
        return f"{self.prefix}/{self.line}/{HOST_STATUS}"

    def jig_state(self, station: str, jig: str) -> str:
        """Retained, QoS 1: one jig's latest state."""
        return f"{self.prefix}/{self.line}/jigs/{station}/{jig}/{JIG_STATE}"

    @property
    def results(self) -> str:
        """Not retained, QoS 1: one attempt record per message."""
        return f"{self.prefix}/{self.line}/{RESULTS}"

    @property
    def work_order(self) -> str:
        """Retained, QoS 1: the progress of the line's work order (published by the host)."""
        return f"{self.prefix}/{self.line}/{WORK_ORDER}"

    @property
    def outbox(self) -> str:
        """Retained, QoS 1: results not yet accepted by the broker (published by the host)."""
        return f"{self.prefix}/{self.line}/{OUTBOX}"

    @property
    def host_crl(self) -> str:
        """Retained, QoS 1: the CRL the host keeps (`[pki] crl_dir`), published by the host."""
        return f"{self.prefix}/{self.line}/{HOST_CRL}"

    @property
    def alarms(self) -> str:
        """Retained, QoS 1: the line's active alarms (published by a dashboard)."""
        return f"{self.prefix}/{self.line}/{ALARMS}"


def subscriptions(prefix: str, line: str = "+") -> list[str]:
    """Filters that see every topic of `line` (default: every line under `prefix`)."""
    return [
        f"{prefix}/{line}/{HOST_STATUS}",
        f"{prefix}/{line}/jigs/+/+/{JIG_STATE}",
        f"{prefix}/{line}/{RESULTS}",
    ]


def plant_subscriptions(prefix: str) -> list[str]:
    """Filters a plant dashboard needs: every line's contract topics, work order, outbox, CRL,
    alarms."""
    return [
        *subscriptions(prefix),
        f"{prefix}/+/{WORK_ORDER}",
        f"{prefix}/+/{OUTBOX}",
        f"{prefix}/+/{HOST_CRL}",
        f"{prefix}/+/{ALARMS}",
    ]


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """What a received topic names."""

    kind: TopicKind
    line: str
    station: str | None = None
    jig: str | None = None


def parse_topic(prefix: str, topic: str) -> ParsedTopic | None:
    """Classify a topic under `prefix`; None for anything outside the contract."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) == 3 and parts[1:] == HOST_STATUS.split("/"):
        return ParsedTopic("host", parts[0])
    if len(parts) == 3 and parts[1:] == OUTBOX.split("/"):
        return ParsedTopic("outbox", parts[0])
    if len(parts) == 3 and parts[1:] == HOST_CRL.split("/"):
        return ParsedTopic("crl", parts[0])
    if len(parts) == 2 and parts[1] == RESULTS:
        return ParsedTopic("results", parts[0])
    if len(parts) == 2 and parts[1] == WORK_ORDER:
        return ParsedTopic("workorder", parts[0])
    if len(parts) == 2 and parts[1] == ALARMS:
        return ParsedTopic("alarms", parts[0])
    if len(parts) == 5 and parts[1] == "jigs" and parts[4] == JIG_STATE:
        return ParsedTopic("jig", parts[0], parts[2], parts[3])
    return None
