"""The gateway configuration: typed models and TOML loading, errors naming file, key and problem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from linehost.config import ConfigPath, DatabaseSection, PkiSection, read_toml, validate
from linehost.config.types import Listen, Name
from linehost.vidpid import parse_vid_pid


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: `work_orders` entry that lets a client name any work order, or none.
ANY_WORK_ORDER = "*"


class GatewaySection(_Section):
    """`[gateway]`: who the gateway is and how lines reach it."""

    name: Name = "gateway"  # its audit chain's name
    listen: Listen = "0.0.0.0:8443"
    tls_cert: ConfigPath  # the gateway's own TLS certificate (server auth), PEM, chain after it
    tls_key: ConfigPath
    client_ca: ConfigPath  # the CA of the lines' client certificates: only those may connect
    client_ca_key: ConfigPath | None = None  # for `gateway client add`; keep it off-line
    client_cert_days: Annotated[int, Field(ge=1, le=3650)] = 397
    allow_reprovision: bool = False  # a new key for a UID that has a DAC supersedes it
    rate: Annotated[float, Field(gt=0)] = 50.0  # default DACs/s per client (token bucket)
    burst: Annotated[int, Field(ge=1)] = 100


class ClientSection(_Section):
    """`[[clients]]`: one line host, named by its client certificate's subject CN."""

    name: Name
    products: list[str]  # "VID:PID" pairs it may have DACs for, e.g. ["FFF1:8000"]
    work_orders: list[str] = Field(default_factory=lambda: [ANY_WORK_ORDER])
    rate: Annotated[float, Field(gt=0)] | None = None  # overrides [gateway] rate
    burst: Annotated[int, Field(ge=1)] | None = None

    @field_validator("products")
    @classmethod
    def _products(cls, value: list[str]) -> list[str]:
        products = []
        for item in value:
            vid, _, pid = item.partition(":")
            try:
                products.append(f"{parse_vid_pid(vid)}:{parse_vid_pid(pid)}")
            except ValueError:
                raise ValueError(
                    f"{item!r}: must be 'VID:PID', 4 hex digits each, e.g. 'FFF1:8000'"
                ) from None
        return products

    def may_issue(self, vid: str, pid: str) -> bool:
        """True when this client may have DACs for `vid`/`pid`."""
        return f"{vid}:{pid}" in self.products

    def may_use_work_order(self, work_order: str | None) -> bool:
        """True when this client may name `work_order` (None: no work order given)."""
        if ANY_WORK_ORDER in self.work_orders:
            return True
        return work_order is not None and work_order in self.work_orders


class GatewayConfig(_Section):
    """A whole gateway configuration file."""

    gateway: GatewaySection
    database: DatabaseSection = DatabaseSection(url="sqlite+aiosqlite:///gateway.db")
    pki: PkiSection
    clients: list[ClientSection] = Field(default_factory=list)
    source: Path | None = None

    @model_validator(mode="after")
    def _checks(self) -> GatewayConfig:
        if self.pki.issuer != "local":
            raise ValueError("pki.issuer: the gateway signs itself; must be 'local'")
        names = [c.name for c in self.clients]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"client {name!r} appears twice in [[clients]]")
        return self

    def client(self, name: str) -> ClientSection | None:
        """The configured client called `name`, or None."""
        return next((c for c in self.clients if c.name == name), None)


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway config; relative paths are resolved against its folder."""
    file = Path(path)
    return validate(GatewayConfig, read_toml(file), file)
