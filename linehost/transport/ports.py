"""The serial ports of this machine, with what identifies a jig and the path to configure it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import serialx


@dataclass(frozen=True, slots=True)
class SerialPort:
    """One serial port; `port` is the stable path to put in `[[jigs]]`."""

    port: str  # /dev/serial/by-id/... when udev links one to the device, else the device
    device: str  # the kernel's name for it today, e.g. /dev/ttyUSB0
    vid: int | None
    pid: int | None
    serial_number: str | None
    manufacturer: str | None
    description: str | None

    @property
    def usb_id(self) -> str:
        """VID:PID in hex as lsusb shows it, or "" for a port that is not USB."""
        if self.vid is None or self.pid is None:
            return ""
        return f"{self.vid:04x}:{self.pid:04x}"


def list_ports() -> list[SerialPort]:
    """Every serial port the system reports (sysfs on Linux), by stable path."""
    found = [_port(info) for info in serialx.list_serial_ports()]
    return sorted(found, key=lambda p: p.port)


def ports_json(ports: Sequence[SerialPort]) -> str:
    """The ports as a JSON array (VID/PID as numbers, plus `usb_id` in hex)."""
    return json.dumps([asdict(p) | {"usb_id": p.usb_id} for p in ports], indent=2)


def ports_table(ports: Sequence[SerialPort]) -> str:
    """A plain text table, header first, one port per line."""
    header = ("PORT", "DEVICE", "VID:PID", "SERIAL", "MANUFACTURER", "DESCRIPTION")
    rows = [header] + [
        (
            p.port,
            p.device,
            p.usb_id or "-",
            p.serial_number or "-",
            p.manufacturer or "-",
            p.description or "-",
        )
        for p in ports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def jigs_toml(ports: Sequence[SerialPort], station: str = "st1") -> str:
    """A `[[jigs]]` block per port, ready to paste into the station config."""
    blocks = []
    for number, p in enumerate(ports, start=1):
        what = ", ".join(x for x in (p.manufacturer, p.description, p.serial_number) if x)
        blocks.append(
            f"[[jigs]]{f'  # {what}' if what else ''}\n"
            f"name = {json.dumps(f'j{number}')}\n"
            f"station = {json.dumps(station)}\n"
            f"port = {json.dumps(p.port)}\n"
        )
    return "\n".join(blocks)


def _port(info: serialx.SerialPortInfo) -> SerialPort:
    description = info.product
    if info.interface_description and info.interface_description != info.product:
        description = " - ".join(x for x in (info.product, info.interface_description) if x)
    return SerialPort(
        port=str(info.device),
        device=str(info.resolved_device),
        vid=info.vid,
        pid=info.pid,
        serial_number=info.serial_number,
        manufacturer=info.manufacturer,
        description=description,
    )
