"""Every wire word of jig protocol v1, in one place (host, device and simulated firmware)."""

from __future__ import annotations

from typing import Final

INIT: Final = "Init"
ABORT: Final = "Abort"
END: Final = "END"
START_PROVISIONING: Final = "Start_provisioning"
UID_PREFIX: Final = "UID:"
CD_PREFIX: Final = "CD:"
FD_PREFIX: Final = "FD:"
FINISH_PREFIX: Final = "finish:"
PEM_BEGIN: Final = "-----BEGIN "
PEM_END: Final = "-----END "
BEGIN_CERTIFICATE: Final = "-----BEGIN CERTIFICATE-----"
END_CERTIFICATE: Final = "-----END CERTIFICATE-----"
BEGIN_CSR: Final = "-----BEGIN CERTIFICATE REQUEST-----"
END_CSR: Final = "-----END CERTIFICATE REQUEST-----"

# Attestation extension (v1.1): the capability word offered in the sync answer
# (`Start_provisioning attest`), the host's challenge and the device's answer.
CAPABILITY_ATTEST: Final = "attest"
ATTEST_CHALLENGE_PREFIX: Final = "Attest:"
ATTEST_ANSWER_PREFIX: Final = "ATTEST:"
