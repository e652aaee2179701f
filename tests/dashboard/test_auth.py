"""`[dashboard]` basic auth or bearer token: nothing but /healthz without credentials."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from linehost.config import DashboardSection, MqttSection
from linehost.dashboard.app import Dashboard
from linehost.errors import ConfigError


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.mqtt
async def test_basic_auth_and_bearer_token(
    broker_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LH_TEST_DASH_PASSWORD", "s3cret")
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    settings = DashboardSection(username="operator", password_env="LH_TEST_DASH_PASSWORD",
                                token_file=token)  # fmt: skip
    dashboard = Dashboard(MqttSection(url=broker_url, topic_prefix=prefix), dashboard=settings)
    url = await dashboard.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("", "events", "api/board", "api/history", "static/dashboard.js"):
                async with http.get(url + path) as r:
                    assert r.status == 401, path
                    assert r.headers["WWW-Authenticate"] == 'Basic realm="linehost"'
            for headers in (
                basic("operator", "wrong"),
                basic("intruder", "s3cret"),
                {"Authorization": "Bearer tok-12"},
                {"Authorization": "Basic !!notbase64"},
            ):
                async with http.get(url + "api/board", headers=headers) as r:
                    assert r.status == 401, headers
            async with http.get(url + "api/board", headers=basic("operator", "s3cret")) as r:
                assert r.status == 200
                assert "lines" in await r.json()
            bearer = {"Authorization": "Bearer tok-123"}
            async with http.get(url + "static/vendor/uPlot.iife.min.js", headers=bearer) as r:
                assert r.status == 200
                assert "uPlot" in await r.text()
            async with http.get(url + "healthz") as r:
                assert r.status in (200, 503)  # open: systemd and load balancers probe it
    finally:
        await dashboard.close()


def test_dashboard_settings_are_checked() -> None:
    assert DashboardSection().listen == "127.0.0.1:8080"  # loopback unless configured
    with pytest.raises(ValidationError, match="basic auth needs both"):
        DashboardSection(username="operator")
    with pytest.raises(ValidationError, match="basic auth needs both"):
        DashboardSection(password_env="X")
    with pytest.raises(ValidationError, match="not both"):
        DashboardSection(token_env="X", token_file=Path("t"))
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        DashboardSection.model_validate({"alarms": {"jig_failures": 0}})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        DashboardSection.model_validate({"alarms": {"crl_margin": -1}})
    assert DashboardSection().alarms.crl_margin == 3 * 86400  # below crl_refresh_margin's 7 days
    with pytest.raises(ConfigError, match="LH_TEST_UNSET is not set"):
        DashboardSection(token_env="LH_TEST_UNSET").token()
    with pytest.raises(ConfigError, match="cannot read"):
        DashboardSection(token_file=Path("/nonexistent/token")).token()
