"""`python -m tests.e2e.preset_sim`: the simulator with chips whose UID and key are known ahead.

Pre-issued bundles need devices whose key exists before the run (a secure element arrives with
its key inside). This wraps `linehost.sim` so devices take their UID and key, in order, from an
identities file, and record the CD each delivery carried; with `--expect-cd` a device answers
finish:003 unless the delivered CD is exactly that file.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.commands.sim import sim_options
from linehost.protocol.device import FINISH_PARAMETER_ERROR, Delivery
from linehost.sim import checks, devices, firmware, identity
from linehost.sim.cli import add_arguments, run_simulator

PRESET = [sys.executable, "-m", "tests.e2e.preset_sim"]


@dataclass
class Identity:
    """A chip: UID and private key."""

    uid: str
    key: ec.EllipticCurvePrivateKey

    def to_json(self) -> str:
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return json.dumps({"uid": self.uid, "key_pem": pem.decode()})


def write_identities(path: Path, identities: list[Identity]) -> Path:
    """The identities file the wrapper reads, one chip per line, in hand-out order."""
    path.write_text("".join(i.to_json() + "\n" for i in identities))
    return path


@dataclass
class _Preset:
    queue: deque[Identity]
    by_key: dict[bytes, str] = field(default_factory=dict)


def _install(identities: Path, cd_record: Path, expect_cd: bytes | None) -> None:
    loaded = deque()
    for line in identities.read_text().splitlines():
        raw = json.loads(line)
        key = serialization.load_pem_private_key(raw["key_pem"].encode(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        loaded.append(Identity(raw["uid"], key))
    preset = _Preset(loaded)

    class PresetPool(identity.IdentityPool):
        def pregenerate(self, count: int) -> None:
            pass

        def make(self, uid: str, **_: Any) -> identity.DeviceIdentity:
            chip = preset.queue.popleft()
            made = identity.key_csr(chip.key)
            preset.by_key[made.public_key_der] = chip.uid
            return identity.DeviceIdentity(
                chip.uid, chip.key, made.csr_pem, made.public_key_der, made.public_key_sha256
            )

    original = firmware.check_delivery
    record = cd_record.open("a", buffering=1)

    def check_delivery(
        public_key_der: bytes, delivery: Delivery, paa: Any = None
    ) -> checks.CheckResult:
        cd = delivery.cd
        record.write(
            json.dumps(
                {
                    "uid": preset.by_key.get(public_key_der),
                    "cd_sha256": None if cd is None else hashlib.sha256(cd).hexdigest(),
                    "cd_bytes": None if cd is None else len(cd),
                }
            )
            + "\n"
        )
        if expect_cd is not None and cd != expect_cd:
            return checks.CheckResult(FINISH_PARAMETER_ERROR, "CD missing or not the expected")
        return original(public_key_der, delivery, paa)

    devices.IdentityPool = PresetPool  # type: ignore[misc]
    firmware.check_delivery = check_delivery  # type: ignore[assignment]


def main() -> int:
    parser = argparse.ArgumentParser(prog="preset_sim")
    parser.add_argument("--identities", type=Path, required=True)
    parser.add_argument("--cd-record", type=Path, required=True)
    parser.add_argument("--expect-cd", type=Path, default=None)
    add_arguments(parser)
    args = parser.parse_args()
    expect = args.expect_cd.read_bytes() if args.expect_cd is not None else None
    _install(args.identities, args.cd_record, expect)
    return asyncio.run(run_simulator(sim_options(args)))


if __name__ == "__main__":
    sys.exit(main())
