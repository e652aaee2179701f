"""The Matter attestation profile checker: a conforming chain, then one broken rule at a time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.errors import PkiError
from linehost.pki import der
from linehost.pki.matter import OID_MATTER_VID
from linehost.pki.profile import (
    Violation,
    check_chain_or_raise,
    check_dac,
    check_dac_der,
    check_paa,
    check_pai,
    describe,
)

from .builders import (
    DAC_FROM,
    OMIT,
    OTHER_KEY,
    PAA_FROM,
    PAA_KEY,
    PAA_NAME,
    PAI_KEY,
    PAI_NAME,
    dac_spec,
    duplicate_first_extension,
    ku,
    name,
    paa_spec,
    pai_spec,
    resign_tbs,
    skid_of,
    with_serial_der,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
PAA = paa_spec().build()
PAI = pai_spec().build()
DAC = dac_spec().build()

Check = Callable[[], list[Violation]]


def test_conforming_chain_has_no_violations() -> None:
    assert check_paa(PAA, NOW) == []
    assert check_pai(PAI, PAA, NOW) == []
    assert check_dac(DAC, PAI) == []
    assert check_dac_der(DAC.public_bytes(serialization.Encoding.DER), PAI) == []
    check_chain_or_raise(PAI, PAA, NOW)


def test_paa_path_length_absent_and_digital_signature_on_ca_are_allowed() -> None:
    paa = paa_spec(
        basic_constraints=x509.BasicConstraints(True, None),
        key_usage=ku("key_cert_sign", "crl_sign", "digital_signature"),
    ).build()
    assert check_paa(paa, NOW) == []


def test_pai_without_pid_is_allowed_and_dac_pid_is_then_free() -> None:
    pai = pai_spec(subject=name("PAI any product", pid=None)).build()
    dac = dac_spec(issuer=pai.subject, subject=name("d", pid="1234")).build()
    assert check_pai(pai, PAA, NOW) == []
    assert check_dac(dac, pai) == []


def dac(**changes: object) -> Check:
    return lambda: check_dac(dac_spec(**changes).build(), PAI)


def dac_edit(edit: Callable[[list[bytes]], list[bytes]]) -> Check:
    return lambda: check_dac(resign_tbs(DAC, edit), PAI)


def pai(now: datetime = NOW, paa: x509.Certificate = PAA, **changes: object) -> Check:
    return lambda: check_pai(pai_spec(**changes).build(), paa, now)


def paa(now: datetime = NOW, **changes: object) -> Check:
    return lambda: check_paa(paa_spec(**changes).build(), now)


def corrupt_signature() -> list[Violation]:
    data = bytearray(DAC.public_bytes(serialization.Encoding.DER))
    data[-1] ^= 0x01  # last byte of s: the DER stays well-formed, the signature does not verify
    return check_dac_der(bytes(data), PAI)


def dac_too_large() -> list[Violation]:
    blob = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x04" * 200)
    return check_dac(dac_spec(extra=[(blob, False)]).build(), PAI)


def pai_too_large() -> list[Violation]:
    blob = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x04" * 200)
    return check_pai(pai_spec(extra=[(blob, False)]).build(), PAA, NOW)


def dac_vid_twice() -> list[Violation]:
    subject = x509.Name([*name("d"), x509.NameAttribute(OID_MATTER_VID, "FFF1")])
    return check_dac(dac_spec(subject=subject).build(), PAI)


def drop_version(fields: list[bytes]) -> list[bytes]:
    assert fields[0][0] == 0xA0
    return fields[1:]


P384 = ec.generate_private_key(ec.SECP384R1())
SHORT_ID = b"\x01" * 8
BOGUS_ID = b"\x02" * 20

# (case id, check, rule, word the message must contain)
CASES: list[tuple[str, Check, str, str]] = [
    ("dac-v1", dac_edit(drop_version), "version", "v3"),
    ("dac-sha384", dac(hash=hashes.SHA384()), "signature_algorithm", "ecdsa-with-SHA256"),
    ("dac-p384-key", dac(key=P384), "public_key", "P-256"),
    ("dac-bc-missing", dac(basic_constraints=OMIT), "basic_constraints", "basicConstraints"),
    (
        "dac-bc-not-critical",
        dac(basic_constraints=(x509.BasicConstraints(False, None), False)),
        "basic_constraints",
        "basicConstraints",
    ),
    (
        "dac-bc-ca-true",
        dac(basic_constraints=x509.BasicConstraints(True, None)),
        "basic_constraints",
        "basicConstraints",
    ),
    (
        "dac-bc-pathlen",
        dac(
            basic_constraints=(
                x509.UnrecognizedExtension(x509.BasicConstraints.oid, der.sequence(der.integer(0))),
                True,
            )
        ),
        "basic_constraints",
        "pathLen",
    ),
    ("dac-ku-missing", dac(key_usage=OMIT), "key_usage", "keyUsage"),
    (
        "dac-ku-not-critical",
        dac(key_usage=(ku("digital_signature"), False)),
        "key_usage",
        "keyUsage",
    ),
    (
        "dac-ku-extra-keycertsign",
        dac(key_usage=ku("digital_signature", "key_cert_sign")),
        "key_usage",
        "keyUsage",
    ),
    ("dac-ku-wrong-bit", dac(key_usage=ku("key_agreement")), "key_usage", "keyUsage"),
    ("dac-skid-missing", dac(skid=OMIT), "subject_key_id", "subjectKeyIdentifier"),
    (
        "dac-skid-8-bytes",
        dac(skid=x509.SubjectKeyIdentifier(SHORT_ID)),
        "subject_key_id",
        "subjectKeyIdentifier",
    ),
    ("dac-akid-missing", dac(akid=OMIT), "authority_key_id", "authorityKeyIdentifier"),
    (
        "dac-akid-8-bytes",
        dac(issuer_key_id=SHORT_ID),
        "authority_key_id",
        "authorityKeyIdentifier",
    ),
    (
        "dac-akid-not-pai-skid",
        dac(issuer_key_id=BOGUS_ID),
        "akid_match",
        "authorityKeyIdentifier",
    ),
    ("dac-vid-lower-case", dac(subject=name("d", vid="fff1")), "vid", "VID"),
    ("dac-vid-3-digits", dac(subject=name("d", vid="FF1")), "vid", "VID"),
    ("dac-vid-twice", dac_vid_twice, "vid", "VID"),
    ("dac-vid-missing", dac(subject=name("d", vid=None)), "vid", "VID"),
    ("dac-vid-not-pai-vid", dac(subject=name("d", vid="FFF2")), "vid_match", "VID"),
    ("dac-pid-missing", dac(subject=name("d", pid=None)), "pid", "PID"),
    ("dac-pid-not-hex", dac(subject=name("d", pid="80G0")), "pid", "PID"),
    ("dac-pid-not-pai-pid", dac(subject=name("d", pid="8001")), "pid_match", "PID"),
    (
        "dac-not-before-before-pai",
        dac(not_before=datetime(2020, 6, 1, tzinfo=UTC)),
        "validity",
        "notBefore",
    ),
    (
        "dac-not-before-after-not-after",
        dac(not_after=datetime(2021, 12, 31, tzinfo=UTC)),
        "validity",
        "notBefore",
    ),
    ("dac-too-large", dac_too_large, "size", "600"),
    ("dac-serial-zero", dac_edit(with_serial_der(0)), "serial", "serial"),
    ("dac-serial-negative", dac_edit(with_serial_der(-5)), "serial", "serial"),
    ("dac-serial-21-octets", dac_edit(with_serial_der(1 << 160)), "serial", "serial"),
    (
        "dac-signed-by-other-key",
        dac(sign_key=OTHER_KEY, issuer_key_id=skid_of(PAI_KEY)),
        "signature",
        "signature",
    ),
    ("dac-corrupted-signature", corrupt_signature, "signature", "signature"),
    ("dac-issuer-not-pai", dac(issuer=name("someone else")), "issuer_name", "issuer"),
    ("dac-repeated-extension", dac_edit(duplicate_first_extension), "extensions", "extension"),
    ("pai-sha384", pai(hash=hashes.SHA384()), "signature_algorithm", "ecdsa-with-SHA256"),
    ("pai-p384-key", pai(key=P384), "public_key", "P-256"),
    (
        "pai-pathlen-1",
        pai(basic_constraints=x509.BasicConstraints(True, 1)),
        "basic_constraints",
        "pathLen",
    ),
    (
        "pai-pathlen-absent",
        pai(basic_constraints=x509.BasicConstraints(True, None)),
        "basic_constraints",
        "pathLen",
    ),
    (
        "pai-ca-false",
        pai(basic_constraints=x509.BasicConstraints(False, None)),
        "basic_constraints",
        "cA",
    ),
    ("pai-ku-no-crlsign", pai(key_usage=ku("key_cert_sign")), "key_usage", "keyUsage"),
    (
        "pai-ku-key-encipherment",
        pai(key_usage=ku("key_cert_sign", "crl_sign", "key_encipherment")),
        "key_usage",
        "keyUsage",
    ),
    (
        "pai-ku-not-critical",
        pai(key_usage=(ku("key_cert_sign", "crl_sign"), False)),
        "key_usage",
        "keyUsage",
    ),
    ("pai-skid-missing", pai(skid=OMIT), "subject_key_id", "subjectKeyIdentifier"),
    ("pai-akid-missing", pai(akid=OMIT), "authority_key_id", "authorityKeyIdentifier"),
    ("pai-akid-not-paa-skid", pai(issuer_key_id=BOGUS_ID), "akid_match", "authorityKeyIdentifier"),
    ("pai-vid-missing", pai(subject=name("PAI", vid=None)), "vid", "VID"),
    ("pai-pid-lower-case", pai(subject=name("PAI", pid="800a")), "pid", "PID"),
    (
        "pai-vid-not-paa-vid",
        pai(
            paa=paa_spec(
                subject=name("PAA", vid="FFF2", pid=None), issuer=name("PAA", vid="FFF2", pid=None)
            ).build(),
            issuer=name("PAA", vid="FFF2", pid=None),
            subject=name("PAI", vid="FFF1"),
        ),
        "vid_match",
        "VID",
    ),
    (
        "pai-not-before-before-paa",
        pai(not_before=datetime(2019, 1, 1, tzinfo=UTC)),
        "validity",
        "notBefore",
    ),
    (
        "pai-expired",
        pai(now=datetime(2025, 1, 1, tzinfo=UTC), not_after=datetime(2024, 1, 1, tzinfo=UTC)),
        "expired",
        "expired",
    ),
    (
        "pai-not-yet-valid",
        pai(now=datetime(2020, 6, 1, tzinfo=UTC)),
        "expired",
        "not yet valid",
    ),
    ("pai-too-large", pai_too_large, "size", "600"),
    (
        "pai-signed-by-other-key",
        pai(sign_key=OTHER_KEY, issuer_key_id=skid_of(PAA_KEY)),
        "signature",
        "signature",
    ),
    ("pai-issuer-not-paa", pai(issuer=name("other PAA", pid=None)), "issuer_name", "issuer"),
    (
        "paa-pathlen-2",
        paa(basic_constraints=x509.BasicConstraints(True, 2)),
        "basic_constraints",
        "pathLen",
    ),
    (
        "paa-bc-not-critical",
        paa(basic_constraints=(x509.BasicConstraints(True, 1), False)),
        "basic_constraints",
        "critical",
    ),
    (
        "paa-ku-digital-signature-only",
        paa(key_usage=ku("digital_signature")),
        "key_usage",
        "keyUsage",
    ),
    ("paa-skid-missing", paa(skid=OMIT), "subject_key_id", "subjectKeyIdentifier"),
    ("paa-with-pid", paa(subject=name("PAA"), issuer=name("PAA")), "pid", "PID"),
    ("paa-sha384", paa(hash=hashes.SHA384()), "signature_algorithm", "ecdsa-with-SHA256"),
    (
        "paa-self-signature-bad",
        paa(sign_key=OTHER_KEY, issuer_key_id=skid_of(PAA_KEY)),
        "signature",
        "signature",
    ),
    ("paa-not-self-issued", paa(issuer=PAI_NAME), "issuer_name", "self-signed"),
    (
        "paa-expired",
        paa(now=datetime(2025, 1, 1, tzinfo=UTC), not_after=datetime(2024, 1, 1, tzinfo=UTC)),
        "expired",
        "expired",
    ),
]


@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
@pytest.mark.parametrize(
    ("check", "rule", "word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_rule_is_enforced(check: Check, rule: str, word: str) -> None:
    violations = check()
    assert violations, "the checker accepted a certificate that breaks a rule"
    assert {v.rule for v in violations} == {rule}, violations
    assert all(word in v.message for v in violations), violations
    assert all("\n" not in v.message for v in violations)


def test_every_rule_of_the_profile_has_a_negative_case() -> None:
    rules = {c[2] for c in CASES}
    assert rules == {
        "version", "signature_algorithm", "public_key", "basic_constraints", "key_usage",
        "subject_key_id", "authority_key_id", "akid_match", "vid", "pid", "vid_match",
        "pid_match", "validity", "size", "serial", "signature", "issuer_name", "extensions",
        "expired",
    }  # fmt: skip


def test_dac_der_that_does_not_parse_is_a_violation() -> None:
    violations = check_dac_der(b"\x30\x03\x02\x01\x01", PAI)
    assert [v.rule for v in violations] == ["parse"]
    assert "DER" in violations[0].message


def test_dac_signed_by_right_key_but_checked_against_another_pai_fails() -> None:
    other_pai = pai_spec(key=OTHER_KEY).build()
    rules = {v.rule for v in check_dac(DAC, other_pai)}
    assert rules == {"signature", "akid_match"}


def test_check_chain_or_raise_names_the_file_and_the_rule() -> None:
    bad_pai = pai_spec(basic_constraints=x509.BasicConstraints(True, 1)).build()
    with pytest.raises(PkiError, match=r"^pki/pai\.pem: .*basicConstraints pathLen must be 0"):
        check_chain_or_raise(bad_pai, PAA, NOW, pai_name="pki/pai.pem")
    bad_paa = paa_spec(key_usage=ku("digital_signature")).build()
    with pytest.raises(PkiError, match=r"^pki/paa\.pem: .*keyUsage"):
        check_chain_or_raise(PAI, bad_paa, NOW, paa_name="pki/paa.pem")


def test_describe_counts_the_rest() -> None:
    violations = [Violation("a", "first"), Violation("b", "second"), Violation("c", "third")]
    assert describe(violations) == "first (and 2 more)"
    assert describe(violations[:1]) == "first"


def test_sanity_of_the_fixture_keys() -> None:
    # Guards the matrix: the conforming chain really uses distinct keys and the expected names.
    assert len({k.public_key().public_numbers().x for k in (PAA_KEY, PAI_KEY, OTHER_KEY)}) == 3
    assert PAI.subject == PAI_NAME
    assert PAA.subject == PAA_NAME
    assert DAC.not_valid_before_utc == DAC_FROM
    assert PAA.not_valid_before_utc == PAA_FROM


def test_the_matter_sdk_test_chain_conforms() -> None:
    # Guards against a checker stricter than connectedhomeip on the SDK's own test certificates.
    data = Path(__file__).parent / "data"
    paa, pai, dac = (
        x509.load_pem_x509_certificate((data / file).read_bytes())
        for file in (
            "chip-test-paa-fff1.pem",
            "chip-test-pai-fff1-8000.pem",
            "chip-test-dac-fff1-8000-0002.pem",
        )
    )
    assert check_paa(paa, NOW) == []
    assert check_pai(pai, paa, NOW) == []
    assert check_dac(dac, pai) == []
    assert check_dac(dac, PAI) != []  # and the same DAC under another PAI does not
