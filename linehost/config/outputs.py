"""The output sections: `[mqtt]`, `[sparkplug]`, `[opcua]` and `[dashboard]`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from linehost.config.types import (
    ConfigPath,
    Listen,
    Name,
    SecretRef,
    Section,
    one_secret_source,
)

_MQTT_URL = re.compile(
    r"(?P<scheme>mqtts?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/?#@\[\]]+)(?::(?P<port>\d{1,5}))?/?"
)


class MqttSection(Section):
    """`[mqtt]`: the broker the line publishes status and results to (optional)."""

    url: str
    topic_prefix: str = "linehost"
    username: str | None = None
    password_file: ConfigPath | None = None
    password_env: str | None = None
    ca_file: ConfigPath | None = None
    client_cert: ConfigPath | None = None
    client_key: ConfigPath | None = None
    client_id: str | None = None  # default: stable per line host, see linehost.mqtt.link
    protocol: Literal["auto", "5", "3.1.1"] = "auto"  # auto: v5, else 3.1.1 if refused
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    drain_timeout: Annotated[float, Field(ge=0, le=600)] = 5.0
    # Seconds between two publishes of one jig's state: changes in between are coalesced
    # (the latest wins). A dashboard needs no more than 10 updates/s per jig; 0 = every change.
    state_interval: Annotated[float, Field(ge=0, le=10)] = 0.1

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        match = _MQTT_URL.fullmatch(value)
        if not match:
            raise ValueError("must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        if match["port"] is not None and not 0 < int(match["port"]) < 65536:
            raise ValueError("port must be 1..65535")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        parts = value.split("/")
        if not value or any(not part or part.strip() != part for part in parts):
            raise ValueError("must be non-empty topic levels separated by '/', no empty level")
        if any(c in value for c in "+#\0"):
            raise ValueError("must not contain the MQTT wildcards '+' or '#'")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> MqttSection:
        one_secret_source(self.password_secret)
        if (self.password_file or self.password_env) and self.username is None:
            raise ValueError("a password needs a username")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        tls_only = (self.ca_file, self.client_cert)
        if not self.url.startswith("mqtts://") and any(v is not None for v in tls_only):
            raise ValueError("ca_file and client_cert need an mqtts:// url")
        return self

    @property
    def tls(self) -> bool:
        """True for mqtts://."""
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        """The broker host name or address (IPv6 without brackets)."""
        match = _MQTT_URL.fullmatch(self.url)
        assert match is not None
        return match["host"].strip("[]")

    @property
    def port(self) -> int:
        """The broker port (1883 for mqtt://, 8883 for mqtts:// unless given)."""
        match = _MQTT_URL.fullmatch(self.url)
        assert match is not None
        return int(match["port"]) if match["port"] else (8883 if self.tls else 1883)

    @property
    def password_secret(self) -> SecretRef:
        """Where the broker password comes from."""
        return SecretRef("mqtt.password", self.password_env, self.password_file)

    def password(self) -> str | None:
        """The broker password from the environment or a file, never from the TOML."""
        return self.password_secret.read_text()


class SparkplugSection(Section):
    """`[sparkplug]`: the line host as a Sparkplug B 3.0 edge node, each jig a device."""

    url: str | None = None  # default: the [mqtt] broker (and its credentials and TLS files)
    group_id: Name = "linehost"
    edge_node_id: Name | None = None  # default: the line name
    primary_host_id: Name | None = None  # births wait for spBv1.0/STATE/<id> online

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None and not _MQTT_URL.fullmatch(value):
            raise ValueError("must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        return value

    def broker(self, mqtt: MqttSection | None) -> MqttSection:
        """The broker settings the edge node connects with (its own client id)."""
        if mqtt is None:
            assert self.url is not None  # LineConfig checks
            return MqttSection(url=self.url, client_id=None)
        update: dict[str, object] = {"client_id": None}
        if self.url is not None:
            update["url"] = self.url
        return mqtt.model_copy(update=update)


_OPCUA_URL = re.compile(
    r"opc\.tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>\d{1,5})(/.*)?"
)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class OpcuaUserSection(Section):
    """`[[opcua.users]]`: one user name and where its password comes from."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    password_env: str | None = None
    password_file: ConfigPath | None = None
    # operator: may call the methods (hold/resume jigs, open/close work orders); viewer: read only
    role: Literal["operator", "viewer"] = "operator"

    @model_validator(mode="after")
    def _secret(self) -> OpcuaUserSection:
        one_secret_source(self.password_secret)
        if not self.password_secret.given:
            raise ValueError("needs password_env or password_file")
        return self

    @property
    def password_secret(self) -> SecretRef:
        """Where the user's password comes from."""
        return SecretRef("opcua.users.password", self.password_env, self.password_file)


class OpcuaSection(Section):
    """`[opcua]`: the OPC UA server (Line -> Stations -> Jigs, the work order)."""

    endpoint: str = "opc.tcp://127.0.0.1:4840/linehost/"
    # auto: None on a loopback endpoint, Basic256Sha256 Sign&Encrypt otherwise.
    security: Literal["auto", "none", "basic256sha256"] = "auto"
    certificate_dir: ConfigPath = Field(default=Path("opcua-pki"), validate_default=True)
    users: list[OpcuaUserSection] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        match = _OPCUA_URL.fullmatch(value)
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError("must look like opc.tcp://HOST:PORT[/PATH]")
        return value

    @property
    def host(self) -> str:
        """The endpoint's host (IPv6 without brackets)."""
        match = _OPCUA_URL.fullmatch(self.endpoint)
        assert match is not None
        return match["host"].strip("[]")

    @property
    def policy(self) -> Literal["none", "basic256sha256"]:
        """The security policy in force."""
        if self.security != "auto":
            return self.security
        return "none" if self.host in _LOOPBACK else "basic256sha256"


class DashboardAlarmsSection(Section):
    """`[dashboard.alarms]`: when the dashboard raises an alarm (seconds for durations)."""

    jig_failures: int = Field(3, ge=1)  # attempts in a row that failed on one jig
    jig_offline_after: float = Field(300.0, ge=0)
    host_offline_after: float = Field(60.0, ge=0)
    outbox_limit: int = Field(100, ge=1)  # results waiting: an alarm at once
    outbox_window: float = Field(300.0, gt=0)  # a depth that only grew over this long: an alarm
    # A host's CRL this close to its nextUpdate without a fresher one: keep it below the hosts'
    # [pki] crl_refresh_margin (they re-sign then), or every refresh cycle raises it briefly.
    crl_margin: float = Field(3 * 86400.0, ge=0)
    publish: bool = True  # publish on {p}/{line}/alarms (one publishing dashboard per prefix)


class DashboardSection(Section):
    """`[dashboard]`: where `linehost dashboard` serves the plant page, who may see it, alarms."""

    listen: Listen = "127.0.0.1:8080"
    username: str | None = None  # HTTP basic auth, with password_file or password_env
    password_file: ConfigPath | None = None
    password_env: str | None = None
    token_file: ConfigPath | None = None  # or a bearer token (Authorization: Bearer ...)
    token_env: str | None = None
    alarms: DashboardAlarmsSection = DashboardAlarmsSection()

    @model_validator(mode="after")
    def _auth(self) -> DashboardSection:
        one_secret_source(self.password_secret)
        one_secret_source(self.token_secret)
        if self.password_secret.given != (self.username is not None):
            raise ValueError("basic auth needs both username and password_file/password_env")
        return self

    @property
    def password_secret(self) -> SecretRef:
        """Where the basic-auth password comes from."""
        return SecretRef("dashboard.password", self.password_env, self.password_file)

    @property
    def token_secret(self) -> SecretRef:
        """Where the bearer token comes from."""
        return SecretRef("dashboard.token", self.token_env, self.token_file)

    def password(self) -> str | None:
        """The basic-auth password from the environment or a file, never from the TOML."""
        return self.password_secret.read_text()

    def token(self) -> str | None:
        """The bearer token from the environment or a file, never from the TOML."""
        return self.token_secret.read_text()
