"""The simulated firmware: identities, the delivery check, and what each personality does."""

from __future__ import annotations

import hashlib
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.errors import ConfigError
from linehost.protocol.device import Delivery, is_base64_line
from linehost.protocol.framing import MAX_LINE
from linehost.sim import personalities
from linehost.sim.checks import check_delivery
from linehost.sim.firmware import Action, Leave, Reseat, SimulatedDevice, Unplug, Write
from linehost.sim.identity import DeviceIdentity, IdentityPool, random_uid
from linehost.sim.personalities import Personality, get_personality, personality_names, register

from .helpers import CSR_BEGIN, CSR_END, Ca, delivery_lines, make_root

REQUIRED = [
    "good",
    "crlf",
    "noisy",
    "slow",
    "late_sync",
    "finish_001",
    "finish_002",
    "finish_003",
    "finish_004",
    "finish_FFFE",
    "finish_FFFF",
    "finish_unknown",
    "bad_csr_signature",
    "p384",
    "silent_after_delivery",
    "unplug",
    "cloned_key",
    "stays",
    "garbage",
]


@pytest.fixture(scope="module")
def pool() -> IdentityPool:
    return IdentityPool()


def public_key(identity: DeviceIdentity) -> ec.EllipticCurvePublicKey:
    return identity.key.public_key()


def deliver(identity: DeviceIdentity, dac_pem: str, pai_pem: str) -> Delivery:
    del identity
    return Delivery(dac_pem, pai_pem, None, {})


# --- identities -----------------------------------------------------------------------------


def test_identity_csr_is_valid_and_matches_key(pool: IdentityPool) -> None:
    ident = pool.make("00000000000000AA")
    csr = x509.load_pem_x509_csr(ident.csr_pem.encode())
    assert csr.is_signature_valid
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki == ident.public_key_der
    assert ident.public_key_sha256 == hashlib.sha256(spki).hexdigest()
    assert isinstance(ident.key.curve, ec.SECP256R1)
    assert ident.uid == "00000000000000AA"


def test_pregenerated_identities_are_used_and_unique() -> None:
    pool = IdentityPool()
    pool.pregenerate(5)
    assert len(pool) == 5
    made = [pool.make(f"{i:016X}") for i in range(7)]  # two beyond the pool: made on demand
    assert len(pool) == 0
    assert len({m.public_key_sha256 for m in made}) == 7


def test_corrupted_csr_signature_parses_but_fails(pool: IdentityPool) -> None:
    ident = pool.make("00000000000000BB", corrupt_signature=True)
    csr = x509.load_pem_x509_csr(ident.csr_pem.encode())
    assert not csr.is_signature_valid
    assert (
        csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == ident.public_key_der
    )


def test_p384_identity(pool: IdentityPool) -> None:
    ident = pool.make("00000000000000CC", curve="P-384")
    csr = x509.load_pem_x509_csr(ident.csr_pem.encode())
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP384R1)
    assert csr.is_signature_valid


def test_identity_with_given_key_is_a_clone(pool: IdentityPool) -> None:
    first = pool.make("00000000000000DD")
    clone = pool.make("00000000000000EE", key=first.key)
    assert clone.public_key_der == first.public_key_der
    assert clone.csr_pem != first.csr_pem  # signed again, ECDSA is randomised


def test_random_uid() -> None:
    rng = random.Random(1)
    uid = random_uid(rng)
    assert len(uid) == 16
    assert uid == uid.upper()
    int(uid, 16)
    assert len(random_uid(rng, 8)) == 8
    assert len(random_uid(rng, 64)) == 64
    for bad in (7, 65):
        with pytest.raises(ValueError, match="8 to 64"):
            random_uid(rng, bad)


# --- the delivery check ---------------------------------------------------------------------


def test_check_accepts_dac_for_own_key(pool: IdentityPool, paa: Ca, pai: Ca) -> None:
    ident = pool.make("0000000000000001")
    dac_pem = pai.issue(public_key(ident), serial=0x00ABCDEF)
    result = check_delivery(ident.public_key_der, deliver(ident, dac_pem, pai.pem), paa.cert)
    assert result.code == 0
    assert result.dac_serial == "ABCDEF"
    der = x509.load_pem_x509_certificate(dac_pem.encode()).public_bytes(serialization.Encoding.DER)
    assert result.dac_sha256 == hashlib.sha256(der).hexdigest()


def test_check_rejects_dac_for_another_key(pool: IdentityPool, pai: Ca) -> None:
    ident = pool.make("0000000000000002")
    other = pool.make("0000000000000003")
    dac_pem = pai.issue(public_key(other))
    result = check_delivery(ident.public_key_der, deliver(ident, dac_pem, pai.pem))
    assert result.code == 0x003
    assert result.dac_serial is None
    assert "key" in result.detail


def test_check_rejects_dac_from_unrelated_ca(pool: IdentityPool, paa: Ca, pai: Ca) -> None:
    ident = pool.make("0000000000000004")
    stranger = make_root("Stranger").sub_ca("Test PAI")  # same subject name, other key
    dac_pem = stranger.issue(public_key(ident))
    result = check_delivery(ident.public_key_der, deliver(ident, dac_pem, pai.pem))
    assert result.code == 0x003
    assert "PAI" in result.detail


def test_check_rejects_pai_not_from_paa(pool: IdentityPool, paa: Ca) -> None:
    ident = pool.make("0000000000000005")
    rogue_pai = make_root("Rogue").sub_ca("Rogue PAI")
    dac_pem = rogue_pai.issue(public_key(ident))
    # Without a PAA the chain DAC -> PAI is all the device can check.
    assert check_delivery(ident.public_key_der, deliver(ident, dac_pem, rogue_pai.pem)).code == 0
    result = check_delivery(ident.public_key_der, deliver(ident, dac_pem, rogue_pai.pem), paa.cert)
    assert result.code == 0x003
    assert "PAA" in result.detail


def test_check_rejects_unparsable_certificates(pool: IdentityPool, pai: Ca) -> None:
    ident = pool.make("0000000000000006")
    junk = "-----BEGIN CERTIFICATE-----\nQUFBQQ==\n-----END CERTIFICATE-----\n"
    assert check_delivery(ident.public_key_der, deliver(ident, junk, pai.pem)).code == 0x003


# --- the device, sans-IO --------------------------------------------------------------------


def make_device(
    pool: IdentityPool, name: str | Personality, *, seed: int = 7, paa: Ca | None = None
) -> SimulatedDevice:
    personality = name if isinstance(name, Personality) else get_personality(name)
    rng = random.Random(seed)
    ident = pool.make(
        random_uid(rng),
        curve=personality.curve,
        corrupt_signature=personality.corrupt_csr_signature,
    )
    return SimulatedDevice(ident, personality, rng=rng, paa=None if paa is None else paa.cert)


def written(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Write))


def lines_of(data: bytes) -> list[str]:
    return data.decode("ascii", "replace").replace("\r\n", "\n").split("\n")[:-1]


def host_lines(*lines: str) -> bytes:
    return "".join(f"{ln}\n" for ln in lines).encode()


def sync(device: SimulatedDevice, now: float = 1.0) -> list[str]:
    return lines_of(written(device.receive(b"Init\n", now)))


def dac_for(device: SimulatedDevice, pai: Ca) -> bytes:
    return host_lines(*delivery_lines(pai.issue(public_key(device.identity)), pai.pem))


def test_good_device_full_flow(pool: IdentityPool, paa: Ca, pai: Ca) -> None:
    device = make_device(pool, "good", paa=paa)
    assert device.arrive(0.0) == []
    out = sync(device)
    assert out[0] == "Start_provisioning"
    assert out[1] == f"UID:{device.identity.uid}"
    assert out[2:] == device.identity.csr_pem.splitlines()
    actions = device.receive(dac_for(device, pai), 2.0)
    assert actions[-1] == Leave()
    assert lines_of(written(actions)) == ["finish:000"]
    assert device.gone
    assert device.log.finish_codes == [0]
    assert device.log.stored is not None
    assert device.log.stored.dac_serial is not None
    assert device.log.first_sync_at == 1.0
    assert device.log.finished_at == 2.0
    # Gone: ignores everything.
    assert device.receive(b"Init\n", 3.0) == []


def test_device_answers_003_to_a_foreign_dac(pool: IdentityPool, pai: Ca) -> None:
    device = make_device(pool, "good")
    sync(device)
    other = pool.make("00000000000000FF")
    data = host_lines(*delivery_lines(pai.issue(public_key(other)), pai.pem))
    assert lines_of(written(device.receive(data, 2.0))) == ["finish:003"]
    assert device.log.stored is None
    assert device.log.rejected is not None
    assert device.log.finish_codes == [3]


def test_device_delivery_split_across_reads(pool: IdentityPool, pai: Ca) -> None:
    device = make_device(pool, "good")
    sync(device)
    data = dac_for(device, pai)
    actions: list[Action] = []
    for i in range(0, len(data), 13):
        actions += device.receive(data[i : i + 13], 2.0)
    assert lines_of(written(actions)) == ["finish:000"]


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("finish_001", "finish:001"),
        ("finish_002", "finish:002"),
        ("finish_003", "finish:003"),
        ("finish_004", "finish:004"),
        ("finish_FFFE", "finish:FFFE"),
        ("finish_FFFF", "finish:FFFF"),
        ("finish_unknown", "finish:0ABC"),
        ("finish_1234", "finish:1234"),
    ],
)
def test_forced_finish_personalities(pool: IdentityPool, pai: Ca, name: str, line: str) -> None:
    device = make_device(pool, name)
    sync(device)
    actions = device.receive(dac_for(device, pai), 2.0)
    assert lines_of(written(actions)) == [line]
    assert actions[-1] == Leave()
    assert device.log.stored is None  # nothing stored on a failure code


def test_crlf_every_line_ends_crlf(pool: IdentityPool, pai: Ca) -> None:
    device = make_device(pool, "crlf")
    data = written(device.receive(b"Init\r\n", 1.0))
    data += written(device.receive(dac_for(device, pai), 2.0))
    assert data.endswith(b"finish:000\r\n")
    assert data.count(b"\n") == data.count(b"\r\n") > 5


def test_noisy_logs_inside_the_csr_block(pool: IdentityPool, pai: Ca) -> None:
    for seed in range(20):
        device = make_device(pool, "noisy", seed=seed)
        out = sync(device)
        block = out[out.index(CSR_BEGIN) + 1 : out.index(CSR_END)]
        logs = [ln for ln in block if not is_base64_line(ln)]
        assert logs, "no log line inside the CSR block"
        assert all(" " in ln for ln in logs)
        # Without the log lines the block is the device's CSR.
        pem = "\n".join([CSR_BEGIN, *(ln for ln in block if is_base64_line(ln)), CSR_END]) + "\n"
        assert pem == device.identity.csr_pem


def test_noisy_logs_while_receiving(pool: IdentityPool, pai: Ca) -> None:
    device = make_device(pool, "noisy", seed=3)
    sync(device)
    out = lines_of(written(device.receive(dac_for(device, pai), 2.0)))
    assert out[-1] == "finish:000"
    assert len(out) > 1  # log lines came while the delivery was read
    assert all(" " in ln for ln in out[:-1])


def test_slow_writes_byte_by_byte(pool: IdentityPool) -> None:
    device = make_device(pool, "slow")
    actions = device.receive(b"Init\n", 1.0)
    writes = [a for a in actions if isinstance(a, Write)]
    assert writes
    assert all(w.byte_delay == personalities.SLOW_BYTE_DELAY > 0 for w in writes)


def test_late_sync_banner_and_ignored_inits(pool: IdentityPool) -> None:
    device = make_device(pool, "late_sync")
    banner = lines_of(written(device.arrive(0.0)))
    assert banner == list(personalities.BOOT_BANNER)
    for _ in range(personalities.LATE_SYNC_INITS):
        assert device.receive(b"Init\n", 1.0) == []
    assert sync(device)[0] == "Start_provisioning"


def test_late_sync_ignores_a_burst_of_stale_inits(pool: IdentityPool) -> None:
    device = make_device(pool, "late_sync")
    burst = b"Init\n" * (personalities.LATE_SYNC_INITS + 3)
    out = lines_of(written(device.receive(burst, 1.0)))
    assert out.count("Start_provisioning") == 1


def test_bad_csr_signature_device(pool: IdentityPool) -> None:
    device = make_device(pool, "bad_csr_signature")
    out = sync(device)
    csr = x509.load_pem_x509_csr("\n".join(out[2:]).encode() + b"\n")
    assert not csr.is_signature_valid


def test_p384_device(pool: IdentityPool) -> None:
    device = make_device(pool, "p384")
    out = sync(device)
    key = x509.load_pem_x509_csr("\n".join(out[2:]).encode() + b"\n").public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp384r1"


def test_silent_after_delivery(pool: IdentityPool, pai: Ca) -> None:
    device = make_device(pool, "silent_after_delivery")
    sync(device)
    assert device.receive(dac_for(device, pai), 2.0) == []
    assert device.log.finish_codes == []
    # Abort, re-sync (host sees the same UID), abort again: the operator takes it out.
    assert device.receive(b"Abort\n", 3.0) == []
    assert sync(device, 4.0)[0] == "Start_provisioning"
    assert device.receive(b"Abort\n", 5.0) == [Leave()]
    assert device.log.aborted_flows == 2


def test_reseated_after_silence_comes_back_as_the_same_device(pool: IdentityPool, pai: Ca) -> None:
    device = make_device(pool, "reseated_after_silence")
    sync(device)
    dac = dac_for(device, pai)
    assert device.receive(dac, 2.0) == []  # the first delivery goes unanswered
    # The host's result timeout: Abort. The operator takes the same device out.
    assert device.receive(b"Abort\nInit\n", 3.0) == [Reseat(personalities.RESEAT_SECONDS)]
    assert device.out
    assert device.deadline is None
    assert device.receive(b"Init\n", 4.0) == []  # silent while out of the jig
    assert device.poll(100.0) == []
    assert device.put_back(8.0) == []
    assert not device.out
    out = sync(device, 9.0)
    assert out[:2] == ["Start_provisioning", f"UID:{device.identity.uid}"]
    assert out[2:] == device.identity.csr_pem.splitlines()  # the same key
    actions = device.receive(dac, 10.0)
    assert lines_of(written(actions)) == ["finish:000"]
    assert actions[-1] == Leave()
    assert device.log.reseats == 1
    assert device.log.stored is not None
    assert device.session.flows == 2


def test_unplug_after_csr_then_deaf(pool: IdentityPool, pai: Ca) -> None:
    device = make_device(pool, "unplug")
    actions = device.receive(b"Init\n", 1.0)
    assert isinstance(actions[-1], Unplug)
    assert actions[-1].after == personalities.UNPLUG_AFTER_CSR
    assert actions[-1].down == personalities.UNPLUG_SECONDS
    assert lines_of(written(actions))[-1] == CSR_END
    assert device.gone
    assert device.receive(dac_for(device, pai), 2.0) == []


def test_stays_answers_more_rounds_after_success(pool: IdentityPool, pai: Ca) -> None:
    device = make_device(pool, "stays")
    sync(device)
    actions = device.receive(dac_for(device, pai), 2.0)
    assert lines_of(written(actions)) == ["finish:000"]
    assert Leave() not in actions
    for round_ in range(personalities.STAY_ROUNDS):
        out = sync(device, 3.0 + round_)
        assert out[:2] == ["Start_provisioning", f"UID:{device.identity.uid}"]
        actions = device.receive(b"Abort\n", 3.5 + round_)
    assert actions == [Leave()]
    assert device.log.finish_codes == [0]


def test_garbage_before_behaving(pool: IdentityPool, pai: Ca) -> None:
    device = make_device(pool, "garbage")
    data = written(device.receive(b"Init\n", 1.0))
    junk, _, rest = data.partition(b"Start_provisioning\n")
    assert b"\x00" in junk
    with pytest.raises(UnicodeDecodeError):
        junk.decode("utf-8")
    assert max(len(ln) for ln in junk.split(b"\n")) > MAX_LINE
    assert rest.startswith(b"UID:")
    # Only once.
    device.receive(b"Abort\n", 1.5)
    assert written(device.receive(b"Init\n", 2.0)).startswith(b"Start_provisioning\n")


def test_abort_ffff_and_max_aborted_flows(pool: IdentityPool) -> None:
    device = make_device(pool, "abort_ffff")
    sync(device)
    assert lines_of(written(device.receive(b"Abort\n", 2.0))) == ["finish:FFFF"]
    assert device.log.finish_codes == []  # an interrupt is not a result
    sync(device, 3.0)
    actions = device.receive(b"Abort\n", 4.0)
    assert lines_of(written(actions)) == ["finish:FFFF"]
    assert actions[-1] == Leave()


def test_lower_uid(pool: IdentityPool) -> None:
    device = make_device(pool, "lower_uid")
    assert sync(device)[1] == f"UID:{device.identity.uid.lower()}"


def test_device_flow_timeout_via_poll(pool: IdentityPool) -> None:
    device = make_device(pool, "good")
    sync(device, 1.0)
    assert device.deadline is not None
    assert device.poll(device.deadline - 0.1) == []
    assert device.poll(device.deadline) == []  # timed out, first of two flows
    assert device.log.aborted_flows == 1
    assert device.deadline is None


# --- the registry ---------------------------------------------------------------------------


def test_registry_has_every_required_personality() -> None:
    names = personality_names()
    for name in REQUIRED:
        assert name in names
        assert get_personality(name).name == name


def test_unknown_personality_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown device personality 'nope'"):
        get_personality("nope")


def test_patched_timing_constant_applies_at_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(personalities, "SLOW_BYTE_DELAY", 0.123)
    monkeypatch.setattr(personalities, "STAY_ROUNDS", 1)
    assert get_personality("slow").byte_delay == 0.123
    assert get_personality("stays").stay_rounds == 1


def test_register_a_new_personality() -> None:
    register("test_chatty_crlf", get_personality("noisy").with_(name="x", line_ending=b"\r\n"))
    try:
        got = get_personality("test_chatty_crlf")
        assert got.line_ending == b"\r\n"
        assert got.noise > 0
    finally:
        personalities._REGISTRY.pop("test_chatty_crlf")


def test_personality_knob_validation() -> None:
    with pytest.raises(ValueError, match="uid_digits"):
        Personality("x", uid_digits=4)
    with pytest.raises(ValueError, match="finish_code"):
        Personality("x", finish_code=0x10000)
