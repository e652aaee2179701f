"""The pty harness: stable links, a real pyserial host, unplug/re-plug, swaps, lines, records."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import random
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import serial
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linehost.errors import ConfigError, PkiError
from linehost.sim import personalities
from linehost.sim.devices import DeviceFactory
from linehost.sim.harness import LineThread, SimulatedLine, plan_personalities
from linehost.sim.jig import SimulatedJig
from linehost.sim.personalities import get_personality
from tests.waiting import eventually

from .helpers import CSR_END, Ca, Conversation, MiniHost, make_root

P = get_personality


async def in_thread_host(path: Path | str, pai: Ca) -> Conversation:
    """One full conversation from a blocking pyserial host in a worker thread."""

    def run() -> Conversation:
        host = MiniHost(str(path))
        try:
            return host.provision(pai)
        finally:
            host.close()

    return await asyncio.to_thread(run)


def gone(path: Path | str) -> bool:
    """True when not even a dangling link is left at `path`."""
    return not os.path.lexists(path)


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    await eventually(predicate, within=within, every=0.01)


def dac_facts(pem: str) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    return format(cert.serial_number, "X"), hashlib.sha256(der).hexdigest()


async def test_link_points_to_a_raw_pty_and_a_host_provisions(tmp_path: Path, pai: Ca) -> None:
    async with SimulatedJig("j1", tmp_path, [P("good")]) as jig:
        assert jig.path == tmp_path / "j1"
        assert jig.path.is_symlink()
        assert os.readlink(jig.path) == jig.device_path
        assert jig.device_path is not None
        assert jig.device_path.startswith("/dev/pts/")
        runner = asyncio.create_task(jig.run())
        conv = await in_thread_host(jig.path, pai)
        await asyncio.wait_for(runner, 5)
    assert conv.finish == "000"
    assert conv.log_lines == []
    assert not jig.path.exists()
    (record,) = jig.records
    assert record.uid == conv.uid
    assert record.ended == "left"
    assert record.finish_code == 0
    assert record.finish == "000"
    serial_hex, sha = dac_facts(conv.dac_pem)
    assert record.stored_dac_serial == serial_hex
    assert record.stored_dac_sha256 == sha
    csr = x509.load_pem_x509_csr(conv.csr_pem.encode())
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert record.public_key_sha256 == hashlib.sha256(spki).hexdigest()


async def test_host_sees_start_uid_and_csr_over_pyserial(tmp_path: Path) -> None:
    async with SimulatedJig("j1", tmp_path, [P("good")]) as jig:
        runner = asyncio.create_task(jig.run())

        def talk() -> list[str]:
            ser = serial.serial_for_url(str(jig.path), timeout=2)
            try:
                ser.write(b"Init\n")
                lines: list[str] = []
                while not lines or lines[-1] != CSR_END:
                    raw = ser.readline()
                    assert raw.endswith(b"\n")
                    lines.append(raw.decode().rstrip("\n"))
                return lines
            finally:
                ser.close()

        lines = await asyncio.to_thread(talk)
        runner.cancel()
    assert lines[0] == "Start_provisioning"
    assert lines[1].startswith("UID:")
    assert len(lines[1]) == 4 + 16
    assert lines[2] == "-----BEGIN CERTIFICATE REQUEST-----"
    assert jig.records[0].ended == "cancelled"
    assert jig.records[0].finish_code is None


async def test_unplug_fails_reads_and_removes_link_replug_restores_it(
    tmp_path: Path, pai: Ca
) -> None:
    async with SimulatedJig("j1", tmp_path, [P("good"), P("good")], swap_seconds=0) as jig:
        runner = asyncio.create_task(jig.run())
        await wait_for(lambda: jig.current is not None)
        old_pty = jig.device_path
        ser = serial.serial_for_url(str(jig.path), timeout=2)
        try:
            jig.unplug()
            assert gone(jig.path)
            assert not jig.plugged
            with pytest.raises(serial.SerialException):
                await asyncio.to_thread(ser.read, 1)
        finally:
            ser.close()
        with pytest.raises(serial.SerialException):
            serial.serial_for_url(str(jig.path))
        assert jig.records[0].ended == "unplugged"
        jig.replug()
        assert jig.path.is_symlink()
        assert jig.device_path is not None
        assert os.readlink(jig.path) == jig.device_path
        del old_pty  # the kernel may hand out the same /dev/pts number again
        conv = await in_thread_host(jig.path, pai)
        assert conv.finish == "000"
        await asyncio.wait_for(runner, 5)
    assert [r.ended for r in jig.records] == ["unplugged", "left"]


async def test_unplug_personality_vanishes_after_csr_and_returns_with_next_device(
    tmp_path: Path, pai: Ca, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(personalities, "UNPLUG_SECONDS", 0.3)
    # The host thread must read the CSR before the port vanishes (a hang-up discards what is
    # unread): 50 ms was too short for a thread starved on a loaded 2-core CI machine.
    monkeypatch.setattr(personalities, "UNPLUG_AFTER_CSR", 0.5)
    async with SimulatedJig("j1", tmp_path, [P("unplug"), P("good")], swap_seconds=5) as jig:
        runner = asyncio.create_task(jig.run())

        def first_attempt() -> tuple[Conversation, bool]:
            host = MiniHost(str(jig.path), timeout=2)
            conv = Conversation()
            try:
                host.sync(conv)
                host.read_identity(conv)
                try:
                    host.read_line(timeout=2)
                except serial.SerialException:
                    return conv, True
                return conv, False
            finally:
                host.close()

        conv, failed = await asyncio.to_thread(first_attempt)
        assert conv.uid
        assert conv.csr_pem
        assert failed, "the read after the CSR should fail: the port is gone"
        assert gone(jig.path)
        # It comes back after UNPLUG_SECONDS (not swap_seconds) with the next device.
        await wait_for(lambda: jig.path.is_symlink(), within=2)
        second = await in_thread_host(jig.path, pai)
        await asyncio.wait_for(runner, 5)
    assert second.finish == "000"
    assert second.uid != conv.uid
    first, last = jig.records
    assert first.personality == "unplug"
    assert first.ended == "unplugged"
    assert first.finish_code is None
    assert first.stored_dac_serial is None
    assert last.ended == "left"


async def test_bytes_written_while_jig_is_empty_are_dropped(tmp_path: Path, pai: Ca) -> None:
    async with SimulatedJig("j1", tmp_path, [P("good"), P("good")], swap_seconds=0.3) as jig:
        runner = asyncio.create_task(jig.run())
        first = await in_thread_host(jig.path, pai)
        await wait_for(lambda: jig.current is None)
        ser = serial.serial_for_url(str(jig.path), timeout=0.3)
        try:
            ser.write(b"Init\nIn")  # nobody in the jig: lost, including the partial line
            await wait_for(lambda: jig.current is not None)
            ser.write(b"it\n")
            assert await asyncio.to_thread(ser.read, 100) == b""
            ser.write(b"Init\n")
            answer = await asyncio.to_thread(ser.read_until, b"\n")
        finally:
            ser.close()
        runner.cancel()
    assert answer == b"Start_provisioning\n"
    assert first.finish == "000"


async def test_crlf_personality_on_the_wire(tmp_path: Path, pai: Ca) -> None:
    async with SimulatedJig("j1", tmp_path, [P("crlf")]) as jig:
        runner = asyncio.create_task(jig.run())
        conv = await in_thread_host(jig.path, pai)
        await asyncio.wait_for(runner, 5)
    assert conv.finish == "000"
    assert conv.raw.count(b"\n") == conv.raw.count(b"\r\n") > 5


async def test_noisy_personality_on_the_wire(tmp_path: Path, pai: Ca) -> None:
    factory = DeviceFactory(seed=11)
    async with SimulatedJig(
        "j1", tmp_path, [P("noisy")] * 3, swap_seconds=0, factory=factory
    ) as jig:
        runner = asyncio.create_task(jig.run())
        convs = [await in_thread_host(jig.path, pai) for _ in range(3)]
        await asyncio.wait_for(runner, 5)
    for conv in convs:
        assert conv.finish == "000"
        text = conv.raw.decode()
        block = text[text.index("-----BEGIN CERTIFICATE REQUEST") : text.index(CSR_END)]
        assert any(" " in ln for ln in block.splitlines()[1:]), "no log inside the CSR block"
        assert conv.log_lines


async def test_garbage_personality_on_the_wire(tmp_path: Path, pai: Ca) -> None:
    async with SimulatedJig("j1", tmp_path, [P("garbage")]) as jig:
        runner = asyncio.create_task(jig.run())
        conv = await in_thread_host(jig.path, pai)
        await asyncio.wait_for(runner, 5)
    assert conv.finish == "000"
    before = conv.raw[: conv.raw.index(b"Start_provisioning")]
    assert b"\x00" in before
    assert max(len(ln) for ln in before.split(b"\n")) > 1024


async def test_slow_personality_trickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(personalities, "SLOW_BYTE_DELAY", 0.0005)
    async with SimulatedJig("j1", tmp_path, [P("slow")]) as jig:
        runner = asyncio.create_task(jig.run())

        def talk() -> tuple[float, int, int]:
            ser = serial.serial_for_url(str(jig.path), timeout=0.01)
            try:
                ser.write(b"Init\n")
                start = time.monotonic()
                data = b""
                reads = 0
                while CSR_END.encode() not in data:
                    chunk = ser.read(4096)
                    if chunk:
                        reads += 1
                        data += chunk
                    assert time.monotonic() - start < 10
                return time.monotonic() - start, len(data), reads
            finally:
                ser.close()

        elapsed, size, reads = await asyncio.to_thread(talk)
        runner.cancel()
    assert elapsed >= size * 0.0005 * 0.9
    assert reads > 5  # it arrived in pieces


async def test_baud_pacing(tmp_path: Path) -> None:
    async def time_to_csr(baud: int | None) -> tuple[float, int]:
        async with SimulatedJig("j1", tmp_path, [P("good")], baud=baud) as jig:
            runner = asyncio.create_task(jig.run())

            def talk() -> tuple[float, int]:
                ser = serial.serial_for_url(str(jig.path), timeout=3)
                try:
                    ser.write(b"Init\n")
                    start = time.monotonic()
                    data = ser.read_until(CSR_END.encode() + b"\n")
                    return time.monotonic() - start, len(data)
                finally:
                    ser.close()

            try:
                return await asyncio.to_thread(talk)
            finally:
                runner.cancel()

    paced, size = await time_to_csr(9600)
    assert paced >= size * 10 / 9600 * 0.9
    fast, _ = await time_to_csr(None)
    assert fast < paced / 2


async def test_paced_answer_is_timed_from_when_the_hosts_bytes_arrived(tmp_path: Path) -> None:
    """A late timer does not delay the device's answer: it leaves the wire when a UART would.

    The host's `Init` is handed to the device as if it had arrived 0.3 s ago (a timer that fired
    late, in the extreme). The answer's last byte then comes 0.3 s sooner than its wire time
    from now, and never before its wire time from when the `Init` arrived.
    """
    baud, lag = 9600, 0.3
    async with SimulatedJig("j1", tmp_path, [P("good")], baud=baud) as jig:
        runner = asyncio.create_task(jig.run())
        await wait_for(lambda: jig.current is not None)
        opened = asyncio.Event()
        loop = asyncio.get_running_loop()

        def read() -> tuple[float, int]:
            ser = serial.serial_for_url(str(jig.path), timeout=5)
            try:
                loop.call_soon_threadsafe(opened.set)
                data = ser.read_until(CSR_END.encode() + b"\n")
                return time.monotonic(), len(data)
            finally:
                ser.close()

        reader = asyncio.create_task(asyncio.to_thread(read))
        try:
            await opened.wait()
            start = time.monotonic()
            jig._received(b"Init\n", loop.time() - lag)
            done, size = await reader
        finally:
            runner.cancel()
    wire = size * 10 / baud
    elapsed = done - start
    assert size > 350  # Start_provisioning, the UID and the CSR: 0.36 s and more on the wire
    assert wire - lag - 0.01 <= elapsed < wire - 0.05  # timed from now: the whole wire time


async def test_cloned_key_presents_a_provisioned_devices_key(tmp_path: Path, pai: Ca) -> None:
    plan = [P("good"), P("cloned_key")]
    async with SimulatedJig("j1", tmp_path, plan, swap_seconds=0) as jig:
        runner = asyncio.create_task(jig.run())
        first = await in_thread_host(jig.path, pai)
        second = await in_thread_host(jig.path, pai)
        await asyncio.wait_for(runner, 5)
    assert first.uid != second.uid
    key1 = x509.load_pem_x509_csr(first.csr_pem.encode()).public_key()
    key2 = x509.load_pem_x509_csr(second.csr_pem.encode()).public_key()
    assert key1 == key2
    original, clone = jig.records
    assert clone.cloned_from == original.uid
    assert clone.public_key_sha256 == original.public_key_sha256


async def test_swap_jitter_spreads_the_operators_swaps(tmp_path: Path, pai: Ca) -> None:
    """Each swap takes swap_seconds plus a uniform draw of up to swap_jitter from the jig's own
    generator: the drawn pauses, not a fixed one, separate one device's leaving from the next
    one's arrival (so a line's jigs drift out of step, as under real operators)."""
    draws = random.Random("swap-test")
    expected = [0.05 + draws.uniform(0.0, 0.4) for _ in range(3)]
    assert max(expected) - min(expected) > 0.1  # the seed spreads them: the test can tell
    plan = [P("good")] * 4
    rng = random.Random("swap-test")
    async with SimulatedJig(
        "j1", tmp_path, plan, swap_seconds=0.05, swap_jitter=0.4, swap_rng=rng
    ) as jig:
        runner = asyncio.create_task(jig.run())
        for _ in plan:
            conv = await in_thread_host(jig.path, pai)
            assert conv.finish == "000"
        await asyncio.wait_for(runner, 5)
    records = list(jig.records)
    gaps = [
        (datetime.fromisoformat(b.arrived_at) - datetime.fromisoformat(a.left_at)).total_seconds()
        for a, b in itertools.pairwise(records)
    ]
    for gap, want in zip(gaps, expected, strict=True):
        assert want - 0.002 <= gap < want + 0.2, (gaps, expected)
    with pytest.raises(ValueError, match="swap_jitter"):
        SimulatedJig("j2", tmp_path, plan, swap_jitter=-0.1)


async def test_stays_keeps_answering_until_swapped(
    tmp_path: Path, pai: Ca, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(personalities, "STAY_ROUNDS", 2)
    async with SimulatedJig("j1", tmp_path, [P("stays"), P("good")], swap_seconds=0.1) as jig:
        runner = asyncio.create_task(jig.run())

        def host_side() -> list[str]:
            host = MiniHost(str(jig.path))
            uids = []
            try:
                conv = host.provision(pai)
                assert conv.finish == "000"
                uids.append(conv.uid)
                while True:  # waiting_for_swap: abort the same UID until another appears
                    conv = Conversation()
                    host.sync(conv)
                    host.read_identity(conv)
                    uids.append(conv.uid)
                    if conv.uid != uids[0]:
                        return uids
                    host.send("Abort")
            finally:
                host.close()

        uids = await asyncio.to_thread(host_side)
        runner.cancel()
    assert uids[:3] == [uids[0]] * 3  # the result, then STAY_ROUNDS more rounds
    assert len(uids) == 4
    assert uids[3] != uids[0]
    assert jig.records[0].flows == 3
    assert jig.records[0].finish_codes == [0]


async def test_line_manifest_record_and_cleanup(tmp_path: Path, pai: Ca) -> None:
    record = tmp_path / "out" / "devices.jsonl"
    line = SimulatedLine(
        3,
        devices_per_jig=2,
        mix="good,crlf,noisy",
        record=record,
        swap_seconds=0.05,
        seed=5,
    )
    async with line:
        directory = line.directory
        assert directory.is_dir()
        manifest = json.loads(line.manifest_path.read_text())
        assert manifest == line.ports
        assert sorted(manifest) == ["j1", "j2", "j3"]
        for name, path in manifest.items():
            assert path == str(directory / name)
            assert os.readlink(path).startswith("/dev/pts/")

        async def jig_host(path: str) -> list[Conversation]:
            return [await in_thread_host(path, pai) for _ in range(2)]

        convs = await asyncio.gather(*(jig_host(p) for p in manifest.values()))
        await asyncio.wait_for(line.wait(), 5)
        assert line.done
    assert not directory.exists()  # a temp dir the line made is removed
    rows = [json.loads(ln) for ln in record.read_text().splitlines()]
    assert len(rows) == 6
    assert sorted(r["personality"] for r in rows) == ["crlf"] * 2 + ["good"] * 2 + ["noisy"] * 2
    by_uid = {r["uid"]: r for r in rows}
    for conv in [c for cs in convs for c in cs]:
        row = by_uid[conv.uid]
        assert row["finish_code"] == 0
        assert row["finish"] == "000"
        assert (row["stored_dac_serial"], row["stored_dac_sha256"]) == dac_facts(conv.dac_pem)
        assert row["ended"] == "left"
        for key in ("arrived_at", "first_sync_at", "finished_at", "left_at"):
            assert row[key].endswith("+00:00")
    assert set(rows[0]) >= {
        "jig",
        "uid",
        "personality",
        "public_key_sha256",
        "finish_code",
        "stored_dac_serial",
        "stored_dac_sha256",
        "arrived_at",
        "left_at",
    }


def test_line_in_a_thread_with_a_given_directory(tmp_path: Path, pai: Ca) -> None:
    line = SimulatedLine(2, devices_per_jig=1, directory=tmp_path / "ports", swap_seconds=0)
    runner = LineThread(line)
    with runner as running:
        assert running.manifest_path == tmp_path / "ports" / "ports.json"
        for path in running.ports.values():
            host = MiniHost(path)
            try:
                assert host.provision(pai).finish == "000"
            finally:
                host.close()
        assert runner.wait(5)
        runner.call(running.jigs[0].unplug)
        assert not os.path.lexists(running.ports["j1"])
    assert (tmp_path / "ports").is_dir()  # not ours to remove
    assert list((tmp_path / "ports").iterdir()) == []
    assert len(line.records) == 2


async def test_many_jigs_open_and_close(tmp_path: Path) -> None:
    async with SimulatedLine(200, devices_per_jig=0, directory=tmp_path) as line:
        assert len(line.ports) == 200
        targets = {os.readlink(p) for p in line.ports.values()}
        assert len(targets) == 200
        await asyncio.wait_for(line.wait(), 5)
    assert names_in(tmp_path) == []


def test_plan_personalities_proportions_and_seed() -> None:
    plan = plan_personalities(2, 8, "good:3,noisy:1", seed=4)
    flat = [p.name for jig in plan for p in jig]
    assert [len(j) for j in plan] == [8, 8]
    assert flat.count("good") == 12
    assert flat.count("noisy") == 4
    again = plan_personalities(2, 8, "good:3,noisy:1", seed=4)
    assert [[p.name for p in j] for j in again] == [[p.name for p in j] for j in plan]
    single = plan_personalities(3, 2, ["crlf"])
    assert all(p.name == "crlf" for j in single for p in j)


@pytest.mark.parametrize("mix", ["good,nope", "good:0", "good:x", ","])
def test_bad_mix_is_a_config_error(mix: str) -> None:
    with pytest.raises(ConfigError):
        plan_personalities(1, 1, mix)


def test_line_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SimulatedLine(0)
    with pytest.raises(ConfigError):
        SimulatedLine(1, personality="nope")
    with pytest.raises(ConfigError):
        SimulatedLine(1, swap_seconds=-1)
    with pytest.raises(ConfigError, match="swap jitter"):
        SimulatedLine(1, swap_jitter=-0.5)
    with pytest.raises(PkiError, match="cannot read PAA"):
        SimulatedLine(1, paa=tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(PkiError, match="not a PEM or DER"):
        SimulatedLine(1, paa=bad)


async def test_line_with_paa_rejects_a_foreign_pai(tmp_path: Path, paa: Ca, pai: Ca) -> None:
    pem = tmp_path / "paa.pem"
    pem.write_text(paa.pem)
    rogue = make_root("Rogue").sub_ca("Rogue PAI")
    async with SimulatedLine(
        1, devices_per_jig=2, paa=pem, swap_seconds=0, directory=tmp_path / "d"
    ) as line:
        path = line.ports["j1"]
        good = await in_thread_host(path, pai)
        bad = await in_thread_host(path, rogue)
        await asyncio.wait_for(line.wait(), 5)
    assert good.finish == "000"
    assert bad.finish == "003"
    assert line.records[1].check_detail == "PAI is not signed by the PAA"
    assert line.records[1].stored_dac_serial is None


async def test_device_flow_timeout_and_close_ends_run(tmp_path: Path) -> None:
    factory = DeviceFactory(flow_timeout=0.2)
    async with SimulatedJig("j1", tmp_path, [P("good")], factory=factory) as jig:
        runner = asyncio.create_task(jig.run())

        def talk() -> tuple[bytes, bytes, bytes]:
            ser = serial.serial_for_url(str(jig.path), timeout=1)
            try:
                ser.write(b"Init\n")
                first = ser.read_until(CSR_END.encode() + b"\n")
                ser.write(b"Init\n")  # mid-flow: ignored
                ignored = ser.read(1)
                time.sleep(0.3)  # past the device's own timeout: idle again
                ser.write(b"Init\n")
                again = ser.read_until(b"\n")
                return first, ignored, again
            finally:
                ser.close()

        first, ignored, again = await asyncio.to_thread(talk)
        assert first.startswith(b"Start_provisioning\n")
        assert ignored == b""
        assert again == b"Start_provisioning\n"
        assert jig.current is not None
        assert jig.current.session.flows == 2
        assert jig.current.log.aborted_flows == 1
    await asyncio.wait_for(runner, 1)  # close() ends run()
    assert jig.records[0].ended == "cancelled"
