"""The fixed vocabulary: attempt outcomes, assignment states, jig states and finish codes."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How an attempt ended (jig-protocol-v1.md, "Attempt outcomes")."""

    PROVISIONED = "provisioned"
    DEVICE_ERROR = "device_error"
    CSR_REJECTED = "csr_rejected"
    DUPLICATE_KEY = "duplicate_key"
    ALREADY_PROVISIONED = "already_provisioned"
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    PROTOCOL_ERROR = "protocol_error"
    ISSUER_ERROR = "issuer_error"
    POST_STEP_FAILED = "post_step_failed"
    ATTESTATION_FAILED = "attestation_failed"  # v1.1: stored a DAC, could not prove it


class AssignmentStatus(StrEnum):
    """Lifecycle of a UID -> DAC assignment."""

    ISSUED = "issued"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    UNKNOWN = "unknown"
    SUPERSEDED = "superseded"


#: Statuses that still bind a DAC (and its public key) to a device.
LIVE_STATUSES: frozenset[AssignmentStatus] = frozenset(
    {AssignmentStatus.ISSUED, AssignmentStatus.CONFIRMED, AssignmentStatus.UNKNOWN}
)


class JigState(StrEnum):
    """What a jig is doing, as shown on the dashboard and published over MQTT."""

    OFFLINE = "offline"
    WAITING_FOR_DEVICE = "waiting_for_device"
    PROVISIONING = "provisioning"
    WAITING_FOR_SWAP = "waiting_for_swap"
    WAITING_FOR_DATABASE = "waiting_for_database"
    WAITING_FOR_ISSUER = "waiting_for_issuer"  # the signing gateway is away or says "later"
    STOPPED = "stopped"
    PRE_STEP = "pre_step"  # the configured pre_command runs (e.g. flashing provisioning firmware)
    PRE_STEP_FAILED = "pre_step_failed"  # it failed: retried after a back-off or a swap
    POST_STEP = "post_step"  # the configured post_command runs after finish:000
    WORK_ORDER_COMPLETE = "work_order_complete"  # the work order's quantity is reached
    HELD = "held"  # a supervisor stopped the jig taking devices (OPC UA Hold) until resumed


FINISH_OK = 0x000

#: Meaning of each `finish:<code>` the firmware may send.
FINISH_CODES: dict[int, str] = {
    0x000: "provisioning done",
    0x001: "data not found",
    0x002: "buffer too small",
    0x003: "parameter error",
    0x004: "not initialised, or synchronisation failed",
    0xFFFE: "completed with unknown error",
    0xFFFF: "interrupted",
}


def describe_finish(code: int) -> str:
    """The detail text for a finish code, e.g. `finish:003 parameter error`."""
    text = f"finish:{code:03X}"
    meaning = FINISH_CODES.get(code)
    if meaning is None:
        return f"{text} unknown device code {code}"
    return f"{text} {meaning}"
