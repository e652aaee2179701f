"""`linehost run` with `[onboarding]` against the simulator: FD lines stored, codes decode back."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from linehost.onboarding.sealing import generate_key_text
from linehost.onboarding.setup_payload import parse_manual_code, parse_qr_code
from linehost.onboarding.spake2p import is_valid_passcode
from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, write_config
from tests.onboarding.zbar import qr_texts


class _Jobs(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, PrinterServer)
        server.jobs.append(self.rfile.read().decode())


class PrinterServer(socketserver.ThreadingTCPServer):
    """A raw-TCP label printer stand-in that keeps every ZPL job."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Jobs)
        self.jobs: list[str] = []


@pytest.fixture
def printer() -> Iterator[PrinterServer]:
    server = PrinterServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_line_with_onboarding(tmp_path: Path, dev_pki: Path, printer: PrinterServer) -> None:
    (tmp_path / "passcode.key").write_text(generate_key_text())
    sim = SimRun(tmp_path, jigs=4, devices=3, mix="good:4,noisy:1", paa=dev_pki / "paa.pem")
    sim.start()
    port = printer.server_address[1]
    config = write_config(
        tmp_path / "line.toml",
        pki=dev_pki,
        ports=sim.ports,
        extra=(
            "\n[onboarding]\n"
            'discriminator = "sequential"\n'
            "spake2p_iterations = 2000\n"
            'serial_template = "{line}-{yyyymmdd}-{seq:06d}"\n'
            "send_passcode = true\n"
            "rotating_id = true\n"
            'hw_ver = 2\nhw_ver_str = "EVT2"\n'
            'passcode_key_file = "passcode.key"\n'
            "\n[labels]\n"
            f'printer = "127.0.0.1:{port}"\n'
            'folder = "labels"\n'
        ),
    )
    host = HostRun(config).start()
    try:
        sim.wait(timeout=120)
    finally:
        sim.stop()
        code = host.stop()
    log = host.output()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log

    devices = [d for d in sim.devices_seen() if d["stored_dac_serial"]]
    assert len(devices) == 12
    plain = linehost("audit", "--config", config, "export", "--format", "jsonl")
    assert "onboarding" not in plain.stderr
    for record in jsonl(plain.stdout):
        assert not {"passcode", "qr_code", "manual_code", "serial_num"} & set(record)
    full = linehost(
        "audit", "--config", config, "export", "--format", "jsonl", "--include-onboarding"
    )
    assert "--include-onboarding" in full.stderr
    assert "passcodes" in full.stderr
    records = {r["uid"]: r for r in jsonl(full.stdout) if r["status"] == "confirmed"}
    assert set(records) == {d["uid"] for d in devices}

    for device in devices:
        fd = device["factory_data"]
        record = records[device["uid"]]
        # the simulator stored what the host recorded
        assert fd["serial_num"] == record["serial_num"]
        assert int(fd["discriminator"]) == record["discriminator"]
        assert int(fd["passcode"]) == record["passcode"]
        assert fd["spake2p_verifier"] == record["spake2p_verifier"]
        assert fd["spake2p_salt"] == record["spake2p_salt"]
        assert fd["spake2p_it"] == "2000"
        assert (fd["hw_ver"], fd["hw_ver_str"]) == ("2", "EVT2")
        assert len(bytes.fromhex(fd["rd_uid"])) == 16
        assert fd["mfg_date"] == record["issued_at"][:10]
        assert is_valid_passcode(record["passcode"])
        # the recorded codes decode to the device's VID, PID, discriminator and passcode
        qr = parse_qr_code(record["qr_code"])
        assert (qr.vid, qr.pid) == (int(record["vid"], 16), int(record["pid"], 16))
        assert (qr.vid, qr.pid) == (0xFFF1, 0x8000)
        assert (qr.discriminator, qr.passcode) == (int(fd["discriminator"]), int(fd["passcode"]))
        manual = parse_manual_code(record["manual_code"])
        assert manual.passcode == int(fd["passcode"])
        assert manual.short_discriminator == int(fd["discriminator"]) >> 8
        # secrets never in the logs
        assert record["qr_code"] not in log
        assert record["manual_code"] not in log
        assert f"passcode={record['passcode']}" not in log
        # the label: PNG decodes to the recorded QR text, ZPL went to the printer
        png = tmp_path / "labels" / f"{record['serial_num']}.png"
        assert qr_texts(png) == [record["qr_code"]]
        assert any(f"^FDMA,{record['qr_code']}^FS" in job for job in printer.jobs)
    assert sorted(r["discriminator"] for r in records.values()) == list(range(12))
    assert len(printer.jobs) == 12

    uid = devices[0]["uid"]
    again = linehost("label", "--config", config, uid)
    assert records[uid]["serial_num"] in again.stdout
    assert len(printer.jobs) == 13
    assert f"SN {records[uid]['serial_num']}" in printer.jobs[-1]
    missing = linehost("label", "--config", config, "00000000DEADBEEF", check=False)
    assert missing.returncode == 1
    assert "no onboarding data" in missing.stderr
    assert "audit verify: OK" in linehost("audit", "--config", config, "verify").stdout
