"""`linehost ports`: serialx's sysfs listing over a fake /sys and /dev tree, and the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from linehost.transport.ports import list_ports

BY_ID = "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"

# Runs the real CLI entry point with serialx reading the fake tree instead of / .
CLI_ON_TREE = """
import sys
from pathlib import Path
from serialx.platforms import serial_linux
from linehost.cli import main
serial_linux.SYS_ROOT = Path(sys.argv[1]) / "sys"
serial_linux.DEV_ROOT = Path(sys.argv[1]) / "dev"
sys.exit(main(sys.argv[2:]))
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _usb_device(root: Path, name: str, **attrs: str) -> Path:
    device = root / "sys/devices/pci0000:00/usb1" / name
    for key, value in attrs.items():
        _write(device / key, value)
    return device


def _tty(root: Path, name: str, target: Path, subsystem: str) -> None:
    (target / "driver").mkdir(parents=True)
    bus = root / "sys/bus" / subsystem
    bus.mkdir(parents=True, exist_ok=True)
    (target / "subsystem").symlink_to(bus)
    link = root / "sys/class/tty" / name
    link.mkdir(parents=True)
    (link / "device").symlink_to(target)
    _write(root / "dev" / name, "")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An FTDI adapter (usb-serial, linked in by-id), a CDC ACM jig (no link), a bare tty."""
    root = tmp_path.resolve()
    ftdi = _usb_device(
        root, "1-1", idVendor="0403", idProduct="6001", bcdDevice="0600",
        serial="A50285BI", manufacturer="FTDI", product="FT232R USB UART",
    )  # fmt: skip
    _write(ftdi / "1-1:1.0/bInterfaceNumber", "00")
    _tty(root, "ttyUSB0", ftdi / "1-1:1.0/ttyUSB0", "usb-serial")
    _write(ftdi / "1-1:1.0/ttyUSB0/port_number", "0")
    by_id = root / "dev/serial/by-id"
    by_id.mkdir(parents=True)
    (by_id / BY_ID).symlink_to("../../ttyUSB0")
    acm = _usb_device(
        root, "1-2", idVendor="2fe3", idProduct="0100", bcdDevice="0100",
        serial="JIG-0007", manufacturer="ZEPHYR", product="Jig Console",
    )  # fmt: skip
    _write(acm / "1-2:1.0/bInterfaceNumber", "00")
    _tty(root, "ttyACM0", acm / "1-2:1.0", "usb")
    (root / "sys/class/tty/tty0").mkdir(parents=True)  # a virtual console: no driver, skipped
    return root


def test_listing_reads_vid_pid_serial_and_prefers_the_by_id_path(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serialx.platforms import serial_linux

    monkeypatch.setattr(serial_linux, "SYS_ROOT", tree / "sys")
    monkeypatch.setattr(serial_linux, "DEV_ROOT", tree / "dev")
    ftdi, acm = list_ports()  # sorted by port path: by-id links first
    assert ftdi.port == str(tree / "dev/serial/by-id" / BY_ID)
    assert ftdi.device == str(tree / "dev/ttyUSB0")
    assert (ftdi.vid, ftdi.pid, ftdi.usb_id) == (0x0403, 0x6001, "0403:6001")
    assert (ftdi.serial_number, ftdi.manufacturer) == ("A50285BI", "FTDI")
    assert ftdi.description == "FT232R USB UART"
    assert acm.port == acm.device == str(tree / "dev/ttyACM0")  # no by-id link: the device
    assert (acm.usb_id, acm.serial_number, acm.manufacturer) == ("2fe3:0100", "JIG-0007", "ZEPHYR")


def _cli_on_tree(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI_ON_TREE, str(tree), "ports", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cli_table_json_and_toml_over_the_tree(tree: Path) -> None:
    table = _cli_on_tree(tree)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = ["PORT", "DEVICE", "VID:PID", "SERIAL", "MANUFACTURER", "DESCRIPTION"]
    assert lines[0].split() == header
    assert any(BY_ID in line and "0403:6001" in line and "A50285BI" in line for line in lines)

    listed = json.loads(_cli_on_tree(tree, "--json").stdout)
    assert {p["usb_id"]: p["serial_number"] for p in listed} == {
        "0403:6001": "A50285BI",
        "2fe3:0100": "JIG-0007",
    }

    toml = _cli_on_tree(tree, "--toml", "--station", "flash-2")
    assert toml.returncode == 0, toml.stderr
    jigs = tomllib.loads(toml.stdout)["jigs"]
    assert [(j["name"], j["station"]) for j in jigs] == [("j1", "flash-2"), ("j2", "flash-2")]
    assert {j["port"] for j in jigs} == {p["port"] for p in listed}
    assert str(tree / "dev/serial/by-id" / BY_ID) in {j["port"] for j in jigs}


def test_linehost_ports_on_this_machine() -> None:
    linehost = Path(sys.executable).with_name("linehost")
    table = subprocess.run([str(linehost), "ports"], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:2] == ["PORT", "DEVICE"]
    as_json = subprocess.run(
        [str(linehost), "ports", "--json"], capture_output=True, text=True, timeout=60
    )
    assert as_json.returncode == 0
    listed = json.loads(as_json.stdout)
    assert isinstance(listed, list)
    assert all(os.path.exists(p["device"]) for p in listed)
