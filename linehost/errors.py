"""One exception hierarchy for linehost; str(exc) is always a one-line message for a person."""

from __future__ import annotations


class LinehostError(Exception):
    """Base of every error linehost raises on purpose; the CLI prints it as one line."""


class ConfigError(LinehostError):
    """The station configuration is unreadable or invalid (names file, key and problem)."""


class PkiError(LinehostError):
    """The PKI material (PAI, PAA, key, CD) is unusable; fatal at start-up."""


class CsrRejected(LinehostError):
    """A device's CSR fails a check; the message is the attempt's `detail`."""


class IssuerError(LinehostError):
    """The issuer could not produce a DAC (signer failure, no bundle entry, quota)."""


class IssuerUnavailable(IssuerError):
    """The issuer cannot answer now but may soon (gateway unreachable, busy, rate-limited).

    Contract for the line: the device is not consumed; the jig shows `waiting_for_issuer` and
    asks again after a back-off of at least `retry_after` seconds, until the issuer answers.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExhausted(IssuerError):
    """The issuer refuses for good: the client's or work order's DAC quota is used up."""

    def __init__(self, message: str, *, scope: str, name: str) -> None:
        super().__init__(message)
        self.scope = scope  # "client" or "work_order"
        self.name = name


class StoreError(LinehostError):
    """The database refused or failed an operation."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached right now; the caller may wait and retry."""


class TransportError(LinehostError):
    """A jig port failed; the jig goes offline and reopens with backoff."""


class PortMissing(TransportError):
    """The port path does not exist (unplugged, wrong name)."""


class PortBusy(TransportError):
    """The port exists but cannot be opened (in use, permission denied)."""


class PortGone(TransportError):
    """An open port vanished or closed under us."""


class ProtocolViolation(LinehostError):
    """The device broke jig protocol v1; the message is the attempt's `detail`."""


class OnboardingError(LinehostError):
    """Onboarding data cannot be allocated for a device: a configured rule cannot be met."""


class Collision(StoreError):
    """A value the database holds once is already taken by another record: draw again."""


class DacCollision(Collision):
    """Another assignment already holds this DAC serial number or fingerprint."""


class OnboardingCollision(Collision):
    """Another device already holds this serial number or passcode pair."""
