"""The devices a simulated line puts into its jigs: how each is made (unique UIDs, fresh, cloned
or returning keys, seeded behaviour) and what it did (`DeviceRecord`, one JSONL line)."""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import asdict, dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.protocol.device import FLOW_TIMEOUT
from linehost.sim.firmware import SimulatedDevice
from linehost.sim.identity import DeviceIdentity, IdentityPool, random_uid
from linehost.sim.letters import LetterDevice
from linehost.sim.personalities import Personality

#: Keys of provisioned devices kept for `cloned_key` devices.
CLONE_CANDIDATES: Final = 1000
#: UIDs shorter than this many hex digits are checked for collisions (longer ones cannot meet).
_TRACKED_UID_DIGITS: Final = 16

#: A device in a simulated jig, whichever protocol its firmware speaks.
SimDevice = SimulatedDevice | LetterDevice


@dataclass(slots=True)
class DeviceRecord:
    """What one simulated device did, as written to the JSONL record."""

    jig: str
    index: int  # position in the jig's plan, from 0
    uid: str  # upper case, as the host normalises it
    personality: str
    public_key_sha256: str  # lower-case hex of sha256(SubjectPublicKeyInfo DER)
    finish_code: int | None  # the last finish code answered to a delivery
    finish: str | None  # the same as sent, e.g. "000", "0ABC"
    finish_codes: list[int]
    stored_dac_serial: str | None  # upper-case hex, no leading zeros
    stored_dac_sha256: str | None
    check_detail: str | None  # why the firmware refused a DAC (finish:003)
    flows: int  # Start_provisioning answers
    aborted_flows: int
    ended: str  # left | unplugged | cancelled
    cloned_from: str | None
    arrived_at: str
    first_sync_at: str | None
    finished_at: str | None
    left_at: str
    reseats: int = 0  # times the operator took it out and put the same device back
    factory_data: dict[str, str] | None = None  # `FD:` fields stored with the DAC (onboarding)
    protocol: str = "v1"  # the jig protocol its firmware speaks
    attest_offered: bool = False  # offered the attestation extension (v1.1)
    attest_nonce: str | None = None  # lower-case hex of the challenge it received, if any
    stored_cd_sha256: str | None = None  # SHA-256 of the Certification Declaration it stored

    def to_json(self) -> str:
        """One JSONL line (without the newline)."""
        return json.dumps(asdict(self), separators=(",", ":"))


class DeviceFactory:
    """Builds devices for a line: unique UIDs, fresh or cloned keys, seeded behaviour."""

    def __init__(
        self,
        *,
        paa: x509.Certificate | None = None,
        seed: int | None = None,
        flow_timeout: float = FLOW_TIMEOUT,
        identities: IdentityPool | None = None,
    ) -> None:
        self.paa = paa
        self.seed = seed
        self.flow_timeout = flow_timeout
        self.identities = identities if identities is not None else IdentityPool()
        self._uids: set[str] = set()
        self._provisioned: deque[tuple[str, ec.EllipticCurvePrivateKey]] = deque(
            maxlen=CLONE_CANDIDATES
        )
        # Provisioned letter devices by jig: a `returning` (locked) chip comes back elsewhere.
        self._returnable: deque[tuple[str, str, ec.EllipticCurvePrivateKey]] = deque(
            maxlen=CLONE_CANDIDATES
        )
        self._last_on: dict[str, str] = {}  # jig -> UID of the device that left it last

    def make(
        self, personality: Personality, *, jig: str, index: int
    ) -> tuple[SimDevice, str | None]:
        """A new device and, for a clone, the UID whose key it presents."""
        rng = random.Random(f"{self.seed}/{jig}/{index}" if self.seed is not None else None)
        uid = random_uid(rng, personality.uid_digits)
        if personality.returning:
            # Not the device just finished in this jig: the host would see no swap.
            last = self._last_on.get(jig)
            elsewhere = [(u, k) for _, u, k in self._returnable if u != last]
            if elsewhere:
                uid, locked = rng.choice(elsewhere)
                identity = self.identities.make(uid, key=locked)
                return self._device(identity, personality, rng), uid
        if personality.uid_digits < _TRACKED_UID_DIGITS:
            while uid in self._uids:
                uid = random_uid(rng, personality.uid_digits)
            self._uids.add(uid)
        cloned_from: str | None = None
        key: ec.EllipticCurvePrivateKey | None = None
        # Only a key the host has already assigned: a key merely presented elsewhere may reach
        # the host after the clone (slow jigs, a loaded machine), and then the clone is the one
        # provisioned. Before any device is provisioned a clone presents a key of its own.
        if personality.clone_key and self._provisioned:
            cloned_from, key = rng.choice(self._provisioned)
        identity = self.identities.make(
            uid,
            curve=personality.curve,
            corrupt_signature=personality.corrupt_csr_signature,
            key=key,
        )
        return self._device(identity, personality, rng), cloned_from

    def provisioned(self, device: SimDevice, jig: str = "") -> None:
        """Remember a device that stored a DAC, as a source for cloned keys."""
        self._provisioned.append((device.identity.uid, device.identity.key))
        if isinstance(device, LetterDevice) and device.log.finish_codes:
            # Told `q`: the host confirmed it; its chip stays locked with that key.
            self._returnable.append((jig, device.identity.uid, device.identity.key))

    def left(self, device: SimDevice, jig: str) -> None:
        """`device` left `jig` (the last device the host saw there)."""
        self._last_on[jig] = device.identity.uid

    def _device(
        self, identity: DeviceIdentity, personality: Personality, rng: random.Random
    ) -> SimDevice:
        if personality.protocol == "ecc608-letters":
            return LetterDevice(
                identity, personality, rng=rng, paa=self.paa, flow_timeout=self.flow_timeout
            )
        return SimulatedDevice(
            identity, personality, rng=rng, paa=self.paa, flow_timeout=self.flow_timeout
        )
