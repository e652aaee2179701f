"""A real `linehost gateway` for a benchmark's line: its own TLS (server CA, client CA, one
client certificate for the line), its own database (the caller's URL: SQLite in the work folder,
or a fresh PostgreSQL database), the PAI key in a file, no rate limit or quota in the
way. `start_gateway` hands back the `[pki]` section the line uses (`issuer = "est"`).

Used by benchmarks/line.py --issuer est / --compare-issuers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The line's client name at the gateway (its client certificate's CN).
CLIENT = "bench-line"
STARTUP_TIMEOUT = 60.0


@dataclass
class GatewayRun:
    """A gateway process serving one line."""

    proc: subprocess.Popen[Any]
    port: int
    pki_section: str  # the line's `[pki]` + `[pki.est]` TOML
    log: Path

    @property
    def pid(self) -> int:
        """The gateway's process id (for its CPU figures)."""
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM and wait (kill after 30 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gateway(work: Path, pki: Path, url: str | None, *, concurrency: int) -> GatewayRun:
    """`linehost gateway` on a free port for a line with the dev PKI in `pki`, recording in
    `url` (None: SQLite in the work folder); the line may have `concurrency` requests in
    flight."""
    from linehost.gateway.tls import init_tls, make_client_cert, write_client_files

    folder = work / "gateway"
    folder.mkdir(parents=True, exist_ok=True)
    tls = init_tls(folder / "tls", ["127.0.0.1"])
    cert, key = make_client_cert(CLIENT, tls.client_ca, tls.client_ca_key, 30)
    write_client_files(folder / "clients", CLIENT, cert, key)
    url = url or f"sqlite+aiosqlite:///{folder / 'gateway.db'}"
    port = _free_port()
    config = folder / "gateway.toml"
    config.write_text(
        f'[gateway]\nname = "gw-bench"\nlisten = "127.0.0.1:{port}"\n'
        f'tls_cert = "{tls.server_cert}"\ntls_key = "{tls.server_key}"\n'
        f'client_ca = "{tls.client_ca}"\n'
        f'[database]\nurl = "{url}"\n'
        f'[pki]\npai_cert = "{pki / "pai.pem"}"\npaa_cert = "{pki / "paa.pem"}"\n'
        f'pai_key = "{pki / "pai.key"}"\nvid = "FFF1"\npid = "8000"\n'
        # The benchmark measures throughput: no token bucket may pace the line.
        f'[[clients]]\nname = "{CLIENT}"\nproducts = ["FFF1:8000"]\n'
        "rate = 1000000.0\nburst = 1000000\n"
    )
    log = folder / "gateway.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "linehost.cli", "--log-level", "warning", "gateway",
             "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )  # fmt: skip
    run = GatewayRun(
        proc,
        port,
        f'[pki]\nissuer = "est"\npai_cert = "{pki / "pai.pem"}"\n'
        f'paa_cert = "{pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
        f'[pki.est]\nurl = "https://127.0.0.1:{port}"\n'
        f'client_cert = "{folder / "clients" / f"{CLIENT}.pem"}"\n'
        f'client_key = "{folder / "clients" / f"{CLIENT}.key"}"\n'
        f'server_ca = "{tls.server_ca}"\nconcurrency = {concurrency}\n',
        log,
    )
    try:
        _wait_listening(run)
    except BaseException:
        run.stop()
        raise
    return run


def _wait_listening(run: GatewayRun) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            raise SystemExit(f"gateway exited ({run.proc.returncode}):\n{run.log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", run.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"gateway did not listen within {STARTUP_TIMEOUT} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
