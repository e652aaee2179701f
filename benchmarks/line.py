"""Line benchmark: `linehost run` on N simulated jigs provisions M devices; one JSON line out.

The simulator runs in its own process (`python -m linehost.sim`), as real jigs would be; the
host is the real `linehost run` with a generated station config. Figures:

- devices_per_s: provisioned devices / (last finish - first sync), from the simulator's record;
- latency_ms: host-added latency from the host's own probe (LINEHOST_LATENCY_FILE):
  CSR fully received -> first DAC byte written, and finish: received -> attempt committed;
  three parts of the first: csr_wait (CSR read -> the host begins checking it: the wait behind
  other jigs' work on the event loop), issue (signed and checked) and assign_commit;
  latency_ms_after_first_round: the same without the first N samples of each (the start, when
  all N jigs begin at once);
- cpu_ms_per_device: user+system CPU of the host process while the devices were provisioned
  (from /proc), divided by the devices, and sys_ms_per_device its kernel part (socket writes and
  reads, polling); rss_mb: the host's peak resident set (VmHWM);
- with --baud B: wire_bound_s (the bytes of one conversation at B baud, 10 bits per byte, both
  legs in sequence), per_device_s (mean time between two finishes on a jig, less the swap
  between them: empty_jig_s) and their ratio; the simulator times each answer from when the
  host's last byte would have arrived and, up to 256 jigs, waits in select() (exact timeouts),
  so the ratio is the hosts', not the simulator's timers';
- with --swap-jitter S: each swap takes 0..S seconds (uniform, seeded) instead of 0, so the jigs
  fall out of the lockstep that identical devices with instant swaps keep;
- with --protocol ecc608-letters: the same on ECC608 letter-protocol jigs and devices (single
  command letters, `letter_gap` pauses, read-back; `[pki] allow_without_pop = true`);
- with --thread-per-port: a second JSON line for the same devices provisioned by a blocking
  thread-per-port host (pyserial + cryptography + sqlite3), the shape of one-script-per-board tools;
- with --issuer est: the line signs nothing itself; a real `linehost gateway` process (its own
  TLS, client certificate for the line, database of the same kind as the line's, PAI key in a
  file, no rate limit) issues every DAC over EST (`[pki] issuer = "est"`, `[pki.est]
  concurrency = --est-concurrency`); gateway_cpu_ms_per_device is the gateway's CPU;
- with --compare-issuers: the same run twice in one invocation, `issuer = "local"` then
  `issuer = "est"`, one JSON line each (field "issuer"), so both see the same machine load.

    python benchmarks/line.py --jigs 64 --devices 6400 --database postgres --mqtt
    python benchmarks/line.py --jigs 64 --devices 3200 --compare-issuers
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_SERVER = os.environ.get("LINEHOST_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
MQTT_URL = "mqtt://127.0.0.1:1883"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def gc_figures(pauses: list[list[float]]) -> dict[str, Any]:
    """The host's garbage collections during the run: how many, how many full, longest pause."""
    return {
        "collections": len(pauses),
        "full": sum(1 for generation, _ in pauses if generation == 2),
        "max_ms": round(max((s for _, s in pauses), default=0.0) * 1000, 2),
    }


# --- measuring a process -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def system_seconds(pid: int) -> float:
    """The system (kernel) part of `cpu_seconds`: socket writes and reads, polling."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB."""
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds."""
    if not samples:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}  # type: ignore[dict-item]
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000, 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": at(1.0), "n": len(ordered)}


# --- databases -----------------------------------------------------------------------------


def create_pg_database() -> tuple[str, str]:
    """A fresh PostgreSQL database: (SQLAlchemy URL, name)."""
    from urllib.parse import urlsplit

    import asyncpg

    parts = urlsplit(PG_SERVER)
    params = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": parts.username or "postgres",
        "password": parts.password,
        "database": "postgres",
    }
    name = f"linehost_bench_{secrets.token_hex(5)}"

    async def go() -> None:
        conn = await asyncpg.connect(**params)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(go())
    auth = params["user"] if not params["password"] else f"{params['user']}:{params['password']}"
    return f"postgresql+asyncpg://{auth}@{params['host']}:{params['port']}/{name}", name


def drop_pg_database(name: str) -> None:
    from urllib.parse import urlsplit

    import asyncpg

    parts = urlsplit(PG_SERVER)

    async def go() -> None:
        conn = await asyncpg.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=parts.username or "postgres",
            password=parts.password,
            database="postgres",
        )
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(go())


def mean_dac_pem_bytes(url: str, query: str) -> float | None:
    """Mean size of the DAC PEMs the run issued (for the wire bound), by `query`."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split(":///", 1)[1]) as conn:
            row = conn.execute(query).fetchone()
        return None if row[0] is None else float(row[0])
    import asyncpg

    async def go() -> float | None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            value = await conn.fetchval(query)
        finally:
            await conn.close()
        return None if value is None else float(value)

    return asyncio.run(go())


# --- the simulator -------------------------------------------------------------------------


class Simulator:
    """`python -m linehost.sim` in its own process."""

    def __init__(
        self,
        work: Path,
        jigs: int,
        per_jig: int,
        baud: int | None,
        mix: str = "good",
        protocol: str = "v1",
        seed: int = 1,
        swap_jitter: float = 0.0,
    ) -> None:
        self.record = work / "devices.jsonl"
        self.args = [
            sys.executable, "-m", "linehost.sim",
            "--jigs", str(jigs), "--devices", str(per_jig), "--mix", mix,
            "--dir", str(work / "jigs"), "--record", str(self.record),
            "--swap-seconds", "0", "--swap-jitter", str(swap_jitter),
            "--seed", str(seed), "--linger", "600", "--protocol", protocol,
        ]  # fmt: skip
        if baud is not None:
            self.args += ["--baud", str(baud)]
        self.jigs = jigs
        self.total = jigs * per_jig
        self.proc: subprocess.Popen[str] | None = None
        self.ports: dict[str, str] = {}
        self._lines = 0
        self._offset = 0

    def start(self) -> None:
        # In ROOT, as the host: an A/B of two trees runs each tree's own simulator too.
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self.proc.stdout is not None
        while len(self.ports) < self.jigs:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise SystemExit(f"simulator died: {err[-2000:]}")
            name, path = line.split()
            self.ports[name] = path

    def done_count(self) -> int:
        """Devices that left so far (reads only what was appended)."""
        if not self.record.exists():
            return 0
        with self.record.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        complete = chunk.rfind(b"\n") + 1
        self._offset += complete
        self._lines += chunk[:complete].count(b"\n")
        return self._lines

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.record.read_text().splitlines() if ln.strip()]


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def run_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Devices, seconds and per-jig cycle times from the simulator's record.

    A cycle is the time between two finishes on a jig less the time the jig stood empty in
    between (the operator's swap, from one device's `left_at` to the next one's `arrived_at`):
    what the wire, the device and the host take, comparable to the wire bound with or without
    --swap-jitter. `empty_jig_s` is the mean swap so left out.
    """
    ok = [r for r in records if r["stored_dac_serial"]]
    starts = [_ts(r["first_sync_at"]) for r in records if r["first_sync_at"]]
    ends = [_ts(r["finished_at"]) for r in ok]
    seconds = max(ends) - min(starts) if ok and starts else float("nan")
    by_jig: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_jig[r["jig"]].append(r)
    cycles: list[float] = []
    empty: list[float] = []
    for devices in by_jig.values():
        devices.sort(key=lambda r: r["index"])
        for a, b in itertools.pairwise(devices):
            if not (a["stored_dac_serial"] and b["stored_dac_serial"]):
                continue
            swap = max(0.0, _ts(b["arrived_at"]) - _ts(a["left_at"]))
            cycles.append(_ts(b["finished_at"]) - _ts(a["finished_at"]) - swap)
            empty.append(swap)
    return {
        "devices": len(ok),
        "devices_seen": len(records),
        "seconds": round(seconds, 3),
        "devices_per_s": round(len(ok) / seconds, 1) if seconds > 0 else None,
        "per_device_s": round(statistics.fmean(cycles), 5) if cycles else None,
        "empty_jig_s": round(statistics.fmean(empty), 5) if empty else None,
    }


# --- the hosts -----------------------------------------------------------------------------


def write_config(
    path: Path,
    pki: Path,
    ports: dict[str, str],
    url: str,
    mqtt: bool,
    sync: float,
    baud: int,
    checkpoints: Path | None = None,
    sparkplug: bool = False,
    protocol: str = "v1",
    letter_gap: float = 0.2,
    attest: bool = False,
    line: str = "bench",
    pki_section: str | None = None,
) -> None:
    jigs = "".join(
        f'[[jigs]]\nname = "{name}"\nstation = "st{i // 16 + 1}"\nport = "{port}"\n'
        f'baudrate = {baud}\nprotocol = "{protocol}"\n'
        for i, (name, port) in enumerate(ports.items())
    )
    pop = "allow_without_pop = true\n" if protocol != "v1" else ""
    mqtt_section = (
        f'[mqtt]\nurl = "{MQTT_URL}"\ntopic_prefix = "bench{secrets.token_hex(3)}"\n'
        if mqtt
        else ""
    )
    # Issue 16: the Sparkplug B edge node on the same broker (births, DDATA per change, results).
    sparkplug_section = (
        f'[sparkplug]\nurl = "{MQTT_URL}"\ngroup_id = "bench{secrets.token_hex(3)}"\n'
        if sparkplug
        else ""
    )
    audit_section = ""
    if checkpoints is not None:
        # Issue 14: an Ed25519 audit key, a checkpoint every 1000 rows or 10 s, as a line would.
        from linehost.evidence.checkpoint import generate_key_pair

        key, _, _ = generate_key_pair(checkpoints.parent / "audit-key")
        audit_section = (
            f'[audit]\nkey = "{key}"\ncheckpoint_dir = "{checkpoints}"\n'
            "checkpoint_every = 1000\ncheckpoint_interval = 10\n"
        )
    if pki_section is None:  # issuer = "local" with the dev PKI's key
        pki_section = (
            f'[pki]\npai_cert = "{pki / "pai.pem"}"\npai_key = "{pki / "pai.key"}"\n'
            f'paa_cert = "{pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
        )
    head, est, tail = pki_section.partition("[pki.est]")  # pop belongs to [pki] itself
    path.write_text(
        f'[line]\nname = "{line}"\nshutdown_grace = 5\n'
        f'[database]\nurl = "{url}"\n'
        f"{head}{pop}{est}{tail}"
        f"[protocol]\nsync_interval = {sync}\ncsr_timeout = 30\nresult_timeout = 30\n"
        f"letter_gap = {letter_gap}\n"
        # Issue 17: every device challenged after finish:000, its signature verified.
        + ('attest = "require"\n' if attest else "")
        + f"{mqtt_section}{sparkplug_section}{audit_section}{jigs}"
    )


def wait_devices(sim: Simulator, host: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sim.done_count() < sim.total:
        if host.poll() is not None:
            raise SystemExit(f"the host exited early ({host.returncode})")
        if sim.proc is not None and sim.proc.poll() is not None:
            raise SystemExit("the simulator exited early")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {sim.done_count()} of {sim.total} devices done")
        time.sleep(0.2)


def wait_log(path: Path, text: str, proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise SystemExit(f"host exited ({proc.returncode}):\n{path.read_text()[-3000:]}")
        time.sleep(0.05)
    raise SystemExit(f"host did not log {text!r} within {timeout} s")


def bench_linehost(
    args: argparse.Namespace, work: Path, pki: Path, issuer: str = "local"
) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from est_gateway import GatewayRun, start_gateway

    per_jig = math.ceil(args.devices / args.jigs)
    pg_name = gw_pg_name = None
    gateway: GatewayRun | None = None
    if args.database == "postgres":
        url, pg_name = create_pg_database()
    else:
        url = f"sqlite+aiosqlite:///{work / 'linehost.db'}"
    # --attest: v1.1 devices that offer attestation and answer the challenge (issue 17)
    sim = Simulator(
        work,
        args.jigs,
        per_jig,
        args.baud,
        mix="attest" if args.attest else "good",
        protocol=args.protocol,
        swap_jitter=args.swap_jitter,
    )
    config = work / "line.toml"
    latency_file = work / "latency.json"
    log = work / "host.log"
    host: subprocess.Popen[Any] | None = None
    profiler: subprocess.Popen[Any] | None = None
    try:
        pki_section = None
        if issuer == "est":  # the gateway gets a database of the same kind as the line's
            gw_url = None
            if args.database == "postgres":
                gw_url, gw_pg_name = create_pg_database()
            gateway = start_gateway(work, pki, gw_url, concurrency=args.est_concurrency)
            pki_section = gateway.pki_section
        sim.start()
        checkpoints = work / "checkpoints" if args.checkpoints else None
        write_config(
            config,
            pki,
            sim.ports,
            url,
            args.mqtt,
            args.sync_interval,
            args.baud or 115200,
            checkpoints,
            args.sparkplug,
            args.protocol,
            args.letter_gap,
            args.attest,
            pki_section=pki_section,
        )
        cmd = [sys.executable, "-m", "linehost.cli", "--log-level", args.log_level]
        if args.profile == "pyinstrument":
            cmd = [
                sys.executable, "-m", "pyinstrument", "-r", "text", "--show-all",
                "-o", str(args.profile_out or work / "profile.txt"),
                "-m", "linehost.cli", "--log-level", args.log_level,
            ]  # fmt: skip
        with log.open("w") as out:
            host = subprocess.Popen(
                [*cmd, "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LINEHOST_LATENCY_FILE": str(latency_file)},
                cwd=ROOT,
            )
        wait_log(log, "line_started", host)
        cpu0, sys0 = cpu_seconds(host.pid), system_seconds(host.pid)
        assert sim.proc is not None
        sim0 = cpu_seconds(sim.proc.pid)
        gw0 = cpu_seconds(gateway.pid) if gateway is not None else 0.0
        busy0 = machine_busy()
        if args.profile == "py-spy":
            profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(host.pid),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--nonblocking",
                    *(["--gil"] if args.profile_gil else []),
                    "-o",
                    str(args.profile_out or work / "profile.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        wait_devices(sim, host, args.timeout)
        cpu1, sys1 = cpu_seconds(host.pid), system_seconds(host.pid)
        sim1 = cpu_seconds(sim.proc.pid)
        gw1 = cpu_seconds(gateway.pid) if gateway is not None else 0.0
        busy1 = machine_busy()
        rss, hwm = memory_mb(host.pid)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        host.send_signal(signal.SIGTERM)
        code = host.wait(120)
        if code != 0:
            raise SystemExit(f"host exited {code}:\n{log.read_text()[-3000:]}")
        records = sim.records()
        figures = run_figures(records)
        probe = json.loads(latency_file.read_text())
        devices = figures["devices"]
        result: dict[str, Any] = {
            "host": "linehost",
            "issuer": issuer,
            "protocol": args.protocol,
            "jigs": args.jigs,
            "devices": devices,
            "seconds": figures["seconds"],
            "devices_per_s": figures["devices_per_s"],
            "latency_ms": {
                "csr_to_dac": percentiles(probe["csr_to_dac"]),
                "finish_to_commit": percentiles(probe["finish_to_commit"]),
                # Three parts of CSR -> DAC: waiting for the event loop (the other jigs' work
                # ahead of it), signing (and checking) the DAC, committing it.
                "csr_wait": percentiles(probe.get("csr_wait", [])),
                "issue": percentiles(probe.get("issue", [])),
                "assign_commit": percentiles(probe.get("assign_commit", [])),
            },
            # Without the start, when every jig begins at once (the probe's samples are in the
            # order they were taken: the first `jigs` of each are that first round).
            "latency_ms_after_first_round": {
                "csr_to_dac": percentiles(probe["csr_to_dac"][args.jigs :]),
                "finish_to_commit": percentiles(probe["finish_to_commit"][args.jigs :]),
                "csr_wait": percentiles(probe.get("csr_wait", [])[args.jigs :]),
                "issue": percentiles(probe.get("issue", [])[args.jigs :]),
                "assign_commit": percentiles(probe.get("assign_commit", [])[args.jigs :]),
            },
            "cpu_ms_per_device": round((cpu1 - cpu0) * 1000 / devices, 3) if devices else None,
            "sys_ms_per_device": round((sys1 - sys0) * 1000 / devices, 3) if devices else None,
            "statements_per_device": round(probe.get("statements", 0) / devices, 2)
            if devices
            else None,
            "commits_per_device": round(probe.get("commits", 0) / devices, 3) if devices else None,
            "gc": gc_figures(probe.get("gc_pauses", [])),
            "rss_mb": round(hwm, 1),
            "rss_now_mb": round(rss, 1),
            "database": args.database,
            "mqtt": "on" if args.mqtt else "off",
            "sparkplug": "on" if args.sparkplug else "off",
            "attest": "require" if args.attest else "off",
            "attested": sum(1 for r in records if r.get("attest_nonce")),
            "checkpoints": len(list(checkpoints.glob("*.json"))) if checkpoints else "off",
            "log_level": args.log_level,
        }
        result["sim_cpu_ms_per_device"] = (
            round((sim1 - sim0) * 1000 / devices, 3) if devices else None
        )
        result["machine_busy"] = round((busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 3)
        if gateway is not None:
            result["gateway_cpu_ms_per_device"] = (
                round((gw1 - gw0) * 1000 / devices, 3) if devices else None
            )
            if "Traceback" in gateway.log.read_text(errors="replace"):
                result["warning"] = f"Traceback in the gateway log {gateway.log}"
        if args.baud:
            dac_bytes = mean_dac_pem_bytes(url, "SELECT avg(length(dac_pem)) FROM assignments")
            result |= wire_figures(args.baud, dac_bytes, figures["per_device_s"])
            result["empty_jig_s"] = figures["empty_jig_s"]
        result["swap_jitter"] = args.swap_jitter
        result["code"] = code_under_test()
        if "Traceback" in log.read_text(errors="replace"):
            result["warning"] = f"Traceback in the host log {log}"
        return result
    finally:
        for proc in (profiler, host):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        sim.stop()
        if gateway is not None:
            gateway.stop()
        for name in (pg_name, gw_pg_name):
            if name is not None:
                with contextlib.suppress(Exception):
                    drop_pg_database(name)


def code_under_test() -> dict[str, Any]:
    """Which code the host ran: it is started in ROOT with `-m`, so ROOT's package wins over
    PYTHONPATH; an A/B of two trees runs each tree's own copy of this script."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"root": str(ROOT), "commit": commit}


def conversation_bytes(dac_pem_bytes: float) -> float:
    """Bytes of one conversation on the wire, both directions (no CD, no factory data)."""
    from linehost.sim.identity import IdentityPool

    pai = (Path(os.environ["BENCH_PKI"]) / "pai.pem").read_text().strip() + "\n"
    csr = IdentityPool().make("0011223344556677").csr_pem
    host_to_device = len("Init\n") + dac_pem_bytes + len(pai) + len("END\n")
    device_to_host = (
        len("Start_provisioning\n") + len("UID:0011223344556677\n") + len(csr) + len("finish:000\n")
    )
    return host_to_device + device_to_host


def wire_figures(
    baud: int, dac_pem_bytes: float | None, per_device_s: float | None
) -> dict[str, Any]:
    bound = conversation_bytes(dac_pem_bytes or 0.0) * 10 / baud
    return {
        "baud": baud,
        "wire_bound_s": round(bound, 5),
        "per_device_s": per_device_s,
        "ratio": round(per_device_s / bound, 4) if per_device_s else None,
    }


def bench_thread_per_port(args: argparse.Namespace, work: Path, pki: Path) -> dict[str, Any]:
    per_jig = math.ceil(args.devices / args.jigs)
    naive_dir = work / "naive"
    naive_dir.mkdir()
    sim = Simulator(naive_dir, args.jigs, per_jig, args.baud, swap_jitter=args.swap_jitter)
    host: subprocess.Popen[Any] | None = None
    try:
        sim.start()
        spec = naive_dir / "naive.json"
        spec.write_text(
            json.dumps(
                {
                    "ports": list(sim.ports.values()),
                    "db": str(naive_dir / "naive.db"),
                    "pki": str(pki),
                    "sync": args.sync_interval,
                    "baud": args.baud or 115200,
                }
            )
        )
        host = subprocess.Popen(
            [sys.executable, __file__, "--naive-host", str(spec)],
            stdout=subprocess.DEVNULL,
            stderr=(naive_dir / "host.log").open("w"),
        )
        time.sleep(0.2)
        cpu0 = cpu_seconds(host.pid)
        wait_devices(sim, host, args.timeout)
        cpu1 = cpu_seconds(host.pid)
        _rss, hwm = memory_mb(host.pid)
        host.send_signal(signal.SIGTERM)
        host.wait(60)
        figures = run_figures(sim.records())
        devices = figures["devices"]
        wire: dict[str, Any] = {}
        if args.baud is not None:
            db_url = f"sqlite:///{naive_dir / 'naive.db'}"
            dac_bytes = mean_dac_pem_bytes(db_url, "SELECT avg(length(pem)) FROM assignments")
            wire = wire_figures(args.baud, dac_bytes, figures["per_device_s"])
            wire["empty_jig_s"] = figures["empty_jig_s"]
        return wire | {
            "host": "thread-per-port",
            "jigs": args.jigs,
            "devices": devices,
            "seconds": figures["seconds"],
            "devices_per_s": figures["devices_per_s"],
            "cpu_ms_per_device": round((cpu1 - cpu0) * 1000 / devices, 3) if devices else None,
            "rss_mb": round(hwm, 1),
            "database": "sqlite3",
            "mqtt": "off",
        }
    finally:
        if host is not None and host.poll() is None:
            host.kill()
            host.wait()
        sim.stop()


# --- the naive host: one blocking thread per port ------------------------------------------


def naive_host(spec_path: str) -> int:
    """A blocking thread-per-port host loop: pyserial + cryptography + sqlite3, no asyncio."""
    import serial
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    spec = json.loads(Path(spec_path).read_text())
    pki = Path(spec["pki"])
    pai_pem = (pki / "pai.pem").read_bytes()
    pai = x509.load_pem_x509_certificate(pai_pem)
    key = serialization.load_pem_private_key((pki / "pai.key").read_bytes(), None)
    ski = x509.SubjectKeyIdentifier.from_public_key(pai.public_key())  # type: ignore[arg-type]
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    vid_oid = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.1")
    pid_oid = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.2")
    db = spec["db"]
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS assignments (uid TEXT, serial TEXT UNIQUE, pem TEXT,"
            " status TEXT, at REAL)"
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()

    def issue(uid: str, csr_pem: bytes) -> tuple[str, bytes]:
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("bad CSR signature")
        now = dt.datetime.now(dt.UTC)
        serial_no = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, uid),
                        x509.NameAttribute(vid_oid, "FFF1"),
                        x509.NameAttribute(pid_oid, "8000"),
                    ]
                )
            )
            .issuer_name(pai.subject)
            .public_key(csr.public_key())
            .serial_number(serial_no)
            .not_valid_before(now)
            .not_valid_after(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), False)
            .add_extension(aki, critical=False)
            .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return format(serial_no, "X"), cert.public_bytes(serialization.Encoding.PEM)

    def jig(port: str) -> None:
        ser = serial.Serial(port, spec["baud"], timeout=spec["sync"])
        conn = sqlite3.connect(db, timeout=60)
        ser.write(b"Abort\n")
        while not stop.is_set():
            ser.write(b"Init\n")
            line = ser.readline().strip()
            if line != b"Start_provisioning":
                continue
            uid = ser.readline().strip().decode().removeprefix("UID:").upper()
            csr = b""
            while not stop.is_set():
                line = ser.readline()
                csr += line
                if line.startswith(b"-----END"):
                    break
            serial_hex, dac = issue(uid, csr)
            with lock:  # one writer at a time, as such scripts do
                conn.execute(
                    "INSERT INTO assignments VALUES (?, ?, ?, 'issued', ?)",
                    (uid, serial_hex, dac.decode(), time.time()),
                )
                conn.commit()
            ser.write(dac + pai_pem + b"END\n")
            while not stop.is_set():
                line = ser.readline().strip()
                if line.startswith(b"finish:"):
                    break
            status = "confirmed" if line == b"finish:000" else "failed"
            with lock:
                conn.execute(
                    "UPDATE assignments SET status = ? WHERE serial = ?", (status, serial_hex)
                )
                conn.commit()
        ser.close()

    threads = [threading.Thread(target=jig, args=(p,), daemon=True) for p in spec["ports"]]
    for t in threads:
        t.start()
    stop.wait()
    return 0


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/line.py",
        description="Provision M devices on N simulated jigs with `linehost run`; print JSON.",
    )
    parser.add_argument("--jigs", type=int, default=64, help="simulated jigs (64)")
    parser.add_argument("--devices", type=int, default=3200, help="devices in all (3200)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument(
        "--mqtt", action=argparse.BooleanOptionalAction, default=True, help="MQTT relay on/off"
    )
    parser.add_argument(
        "--sparkplug",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Sparkplug B edge node on/off (issue 16; compare devices_per_s of both)",
    )
    parser.add_argument(
        "--checkpoints",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="[audit] signed checkpoints on/off (issue 14; compare devices_per_s of both)",
    )
    parser.add_argument(
        "--attest",
        action=argparse.BooleanOptionalAction,
        default=False,
        help='attesting devices and [protocol] attest = "require" (issue 17; compare with off)',
    )
    parser.add_argument(
        "--issuer",
        choices=["local", "est"],
        default="local",
        help="who signs: the line itself, or a `linehost gateway` process over EST (local)",
    )
    parser.add_argument(
        "--compare-issuers",
        action="store_true",
        help="run with issuer local, then est, in one invocation (one JSON line each)",
    )
    parser.add_argument(
        "--est-concurrency", type=int, default=16, help="[pki.est] concurrency (16)"
    )
    parser.add_argument(
        "--baud", type=int, default=None, help="simulator paces both directions at B baud"
    )
    parser.add_argument(
        "--swap-jitter",
        type=float,
        default=0.0,
        metavar="S",
        help="each swap takes 0..S s (uniform) instead of 0: the jigs drift out of step as under "
        "real operators (0: lockstep, the worst case)",
    )
    parser.add_argument(
        "--thread-per-port",
        action="store_true",
        help="also run a blocking thread-per-port host on the same devices (second JSON line)",
    )
    parser.add_argument(
        "--sync-interval", type=float, default=1.0, help="[protocol] sync_interval (1.0)"
    )
    parser.add_argument(
        "--protocol",
        choices=["v1", "ecc608-letters"],
        default="v1",
        help="the jig protocol of every jig and simulated device (v1)",
    )
    parser.add_argument("--letter-gap", type=float, default=0.2, help="[protocol] letter_gap (0.2)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning"], help="host log level"
    )
    parser.add_argument("--profile", choices=["py-spy", "pyinstrument"], default=None)
    parser.add_argument("--profile-out", type=Path, default=None, help="profile output file")
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="py-spy: sample only while holding the GIL (Python CPU, not waiting)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds before giving up")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work files in DIR")
    parser.add_argument("--naive-host", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@contextlib.contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix="linehost-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.thread_per_port and args.protocol != "v1":
        raise SystemExit("--thread-per-port speaks jig protocol v1 only")
    if args.naive_host:
        return naive_host(args.naive_host)
    from linehost.pki.devpki import init_dev

    with workdir(args.keep) as work:
        pki = work / "pki"
        init_dev(pki)
        os.environ["BENCH_PKI"] = str(pki)
        if args.compare_issuers:
            for issuer in ("local", "est"):
                (work / issuer).mkdir()
                print(json.dumps(bench_linehost(args, work / issuer, pki, issuer)), flush=True)
        else:
            print(json.dumps(bench_linehost(args, work, pki, args.issuer)), flush=True)
        if args.thread_per_port:
            print(json.dumps(bench_thread_per_port(args, work, pki)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
