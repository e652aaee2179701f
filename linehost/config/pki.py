"""`[pki]` and its tables: how a line gets DACs (local CA, PKCS#11, bundle, EST gateway)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from linehost.config.placeholders import CN_PLACEHOLDERS
from linehost.config.types import (
    ConfigPath,
    KeyLocation,
    SecretRef,
    Section,
    VidPid,
    braced,
    one_secret_source,
)


class EstSection(Section):
    """`[pki.est]`: the site signing gateway a line asks for DACs (`issuer = "est"`)."""

    url: str  # https://gateway:8443 (the /.well-known/est/... paths are added)
    client_cert: ConfigPath  # this line's TLS client certificate (`linehost gateway client add`)
    client_key: ConfigPath
    server_ca: ConfigPath  # the CA that signed the gateway's TLS certificate
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0  # one whole request
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 16  # requests in flight at once

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must start with https:// (the gateway speaks EST over TLS only)")
        return value.rstrip("/")


class PreviousPaiSection(Section):
    """`[[pki.previous_pais]]`: a PAI rolled over from: no new DACs, still verified, revoked
    and given its CRL (a key, or a delegated CRL signer, only to sign that CRL)."""

    pai_cert: ConfigPath
    pai_key: KeyLocation | None = None  # a PEM path or a pkcs11: URI (same module and PIN)
    pai_key_passphrase_env: str | None = None
    pai_key_passphrase_file: ConfigPath | None = None
    crl_signer_cert: ConfigPath | None = None
    crl_signer_key: KeyLocation | None = None
    crl_signer_key_passphrase_env: str | None = None
    crl_signer_key_passphrase_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _pairs(self) -> PreviousPaiSection:
        one_secret_source(self.keys().passphrase)
        one_secret_source(self.keys().crl_signer_passphrase)
        if (self.crl_signer_cert is None) != (self.crl_signer_key is None):
            raise ValueError("crl_signer_cert and crl_signer_key go together")
        return self

    def keys(self) -> PaiKeys:
        """This PAI's certificate and key sources."""
        return PaiKeys(
            active=False,
            pai_cert=self.pai_cert,
            pai_key=self.pai_key,
            passphrase=SecretRef(
                "pki.previous_pais.pai_key_passphrase",
                self.pai_key_passphrase_env,
                self.pai_key_passphrase_file,
            ),
            crl_signer_cert=self.crl_signer_cert,
            crl_signer_key=self.crl_signer_key,
            crl_signer_passphrase=SecretRef(
                "pki.previous_pais.crl_signer_key_passphrase",
                self.crl_signer_key_passphrase_env,
                self.crl_signer_key_passphrase_file,
            ),
        )


@dataclass(frozen=True, slots=True)
class PaiKeys:
    """One PAI of `[pki]` (the active one or a previous one) and where its keys are."""

    active: bool
    pai_cert: Path
    pai_key: str | None
    passphrase: SecretRef
    crl_signer_cert: Path | None
    crl_signer_key: str | None
    crl_signer_passphrase: SecretRef


class PkiSection(Section):
    """`[pki]`: where DACs come from and how they look."""

    issuer: Literal["local", "bundle", "est"] = "local"
    est: EstSection | None = None  # for issuer = "est"
    pai_cert: ConfigPath
    pai_key: KeyLocation | None = None  # a PEM path or a pkcs11: URI; not for issuer = "bundle"
    paa_cert: ConfigPath | None = None
    pai_key_passphrase_env: str | None = None
    pai_key_passphrase_file: ConfigPath | None = None
    pkcs11_module: str | None = None  # path of the PKCS#11 module (.so) for a pkcs11: pai_key
    pkcs11_pin_env: str | None = None  # the token PIN: from this environment variable...
    pkcs11_pin_file: ConfigPath | None = None  # ...or from this file; never from the TOML
    cd_file: ConfigPath | None = None  # Certification Declaration (DER CMS SignedData), as CD:
    not_after: datetime | None = None  # DAC notAfter; default 99991231235959Z (no expiry)
    backdate: Annotated[timedelta, Field(ge=timedelta(0), le=timedelta(days=366))] = timedelta(0)
    vid: VidPid
    pid: VidPid
    cn_template: str = "{uid}"
    allow_reprovision: bool = False
    # DACs for bare public keys (jigs with protocol = "ecc608-letters"): no proof of possession.
    allow_without_pop: bool = False
    # Revocation (issue 13): who signs the CRL, how long it holds, where `run` keeps it.
    crl_signer_cert: ConfigPath | None = None  # a delegated CRL signer the PAI issued
    crl_signer_key: KeyLocation | None = None  # its key: a PEM path or a pkcs11: URI
    crl_signer_key_passphrase_env: str | None = None
    crl_signer_key_passphrase_file: ConfigPath | None = None
    crl_next_update: Annotated[timedelta, Field(gt=timedelta(0), le=timedelta(days=3660))] = (
        timedelta(days=30)
    )
    crl_dir: ConfigPath | None = None  # `linehost run` keeps each PAI's current CRL here
    crl_refresh_margin: Annotated[timedelta, Field(ge=timedelta(0))] = timedelta(days=7)
    # PAI rollover (issue 13 item 5): `pai_cert` is the active PAI, these came before it.
    previous_pais: list[PreviousPaiSection] = Field(default_factory=list)
    pai_expiry_warning: Annotated[timedelta, Field(ge=timedelta(0))] = timedelta(days=30)
    # Certification Declarations a work order names are checked against these signers.
    cd_signer_certs: list[ConfigPath] = Field(default_factory=list)

    @model_validator(mode="after")
    def _key_source(self) -> PkiSection:
        if self.issuer == "local" and not self.pai_key:
            raise ValueError("pai_key is required when issuer = 'local'")
        if self.issuer == "est" and self.est is None:
            raise ValueError("issuer = 'est' needs a [pki.est] table (url, client_cert, ...)")
        one_secret_source(self.passphrase_secret)
        one_secret_source(self.pin_secret)
        one_secret_source(self.crl_signer_passphrase_secret)
        if (self.crl_signer_cert is None) != (self.crl_signer_key is None):
            raise ValueError("crl_signer_cert and crl_signer_key go together")
        if self.crl_refresh_margin >= self.crl_next_update:
            raise ValueError("crl_refresh_margin must be shorter than crl_next_update")
        if self.issuer == "local" and self.pai_key and self.pai_key.startswith("pkcs11:"):
            if not self.pkcs11_module:
                raise ValueError("a pkcs11: pai_key needs pkcs11_module (the module path)")
            if not (self.pkcs11_pin_env or self.pkcs11_pin_file):
                raise ValueError("a pkcs11: pai_key needs pkcs11_pin_env or pkcs11_pin_file")
        certs = [self.pai_cert, *(p.pai_cert for p in self.previous_pais)]
        if len(set(certs)) != len(certs):
            raise ValueError("previous_pais: a PAI certificate is named twice")
        return self

    def pais(self) -> list[PaiKeys]:
        """Every PAI of the line: the active one (`pai_cert`) first, then the previous ones."""
        active = PaiKeys(
            active=True,
            pai_cert=self.pai_cert,
            pai_key=self.pai_key,
            passphrase=self.passphrase_secret,
            crl_signer_cert=self.crl_signer_cert,
            crl_signer_key=self.crl_signer_key,
            crl_signer_passphrase=self.crl_signer_passphrase_secret,
        )
        return [active, *(p.keys() for p in self.previous_pais)]

    @field_validator("cn_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(**dict.fromkeys(CN_PLACEHOLDERS, "00"))
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(f"may use only {braced(CN_PLACEHOLDERS)} ({exc})") from None
        return value

    @property
    def passphrase_secret(self) -> SecretRef:
        """Where the PAI key passphrase comes from."""
        return SecretRef(
            "pki.pai_key_passphrase", self.pai_key_passphrase_env, self.pai_key_passphrase_file
        )

    @property
    def crl_signer_passphrase_secret(self) -> SecretRef:
        """Where the delegated CRL signer's key passphrase comes from."""
        return SecretRef(
            "pki.crl_signer_key_passphrase",
            self.crl_signer_key_passphrase_env,
            self.crl_signer_key_passphrase_file,
        )

    @property
    def pin_secret(self) -> SecretRef:
        """Where the PKCS#11 user PIN comes from."""
        return SecretRef("pki.pkcs11_pin", self.pkcs11_pin_env, self.pkcs11_pin_file)

    def passphrase(self) -> bytes | None:
        """The PAI key passphrase from the environment or a file, never from the TOML."""
        raw = self.passphrase_secret.read()
        return None if raw is None else raw.strip()

    def pin(self) -> str | None:
        """The PKCS#11 user PIN from the environment or a file, never from the TOML."""
        return self.pin_secret.read_text()
