"""The gateway configuration: typed models and TOML loading, errors naming file, key and problem."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator

from linehost.config import (
    DatabaseSection,
    PkiSection,
    _check_name,
    _resolve,
    _resolve_db,
    _Section,
    config_error,
    parse_listen,
    read_toml,
)

_PRODUCT = re.compile(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}")

#: `work_orders` entry that lets a client name any work order, or none.
ANY_WORK_ORDER = "*"


class GatewaySection(_Section):
    """`[gateway]`: who the gateway is and how lines reach it."""

    name: str = "gateway"  # its audit chain's name
    listen: str = "0.0.0.0:8443"
    tls_cert: Path  # the gateway's own TLS certificate (server auth), PEM, chain after it
    tls_key: Path
    client_ca: Path  # the CA of the lines' client certificates: only those may connect
    client_ca_key: Path | None = None  # for `gateway client add`; keep it off-line when you can
    client_cert_days: Annotated[int, Field(ge=1, le=3650)] = 397
    allow_reprovision: bool = False  # a new key for a UID that has a DAC supersedes it
    rate: Annotated[float, Field(gt=0)] = 50.0  # default DACs/s per client (token bucket)
    burst: Annotated[int, Field(ge=1)] = 100

    _name = field_validator("name")(_check_name)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


class ClientSection(_Section):
    """`[[clients]]`: one line host, named by its client certificate's subject CN."""

    name: str
    products: list[str]  # "VID:PID" pairs it may have DACs for, e.g. ["FFF1:8000"]
    work_orders: list[str] = Field(default_factory=lambda: [ANY_WORK_ORDER])
    rate: Annotated[float, Field(gt=0)] | None = None  # overrides [gateway] rate
    burst: Annotated[int, Field(ge=1)] | None = None

    _name = field_validator("name")(_check_name)

    @field_validator("products")
    @classmethod
    def _products(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _PRODUCT.fullmatch(item):
                raise ValueError(
                    f"{item!r}: must be 'VID:PID', 4 hex digits each, e.g. 'FFF1:8000'"
                )
        return [item.upper() for item in value]

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
    try:
        config = GatewayConfig.model_validate({**read_toml(file), "source": file})
    except ValidationError as exc:
        raise config_error(exc, file) from None
    base = file.parent
    gw = config.gateway
    return config.model_copy(
        update={
            "gateway": gw.model_copy(
                update={
                    key: _resolve(base, getattr(gw, key))
                    for key in ("tls_cert", "tls_key", "client_ca", "client_ca_key")
                }
            ),
            "database": config.database.model_copy(
                update={"url": _resolve_db(base, config.database.url)}
            ),
            "pki": config.pki.resolved(base),
        }
    )
