"""The contact point and notification policy, from the environment.

A channel is used when its variables are set (non-empty) where ``coinpulse alerting render`` runs; the files
then refer to the same variables (``$__env{NAME}``), which Grafana resolves from its own environment at provisioning
time, so no secret is ever written to disk. Both places need the same values (docker-compose.yml passes them to
both the ``alerting`` and the ``grafana`` service).

| channel   | variables                                                                              |
|-----------|----------------------------------------------------------------------------------------|
| email     | COINPULSE_ALERT_EMAIL_TO (addresses, comma separated); Grafana's SMTP: GF_SMTP_HOST ...  |
| webhook   | COINPULSE_ALERT_WEBHOOK_URL, optional COINPULSE_ALERT_WEBHOOK_BEARER_TOKEN             |
| Slack     | COINPULSE_ALERT_SLACK_WEBHOOK_URL, or COINPULSE_ALERT_SLACK_TOKEN + _SLACK_CHANNEL        |
| Telegram  | COINPULSE_ALERT_TELEGRAM_BOT_TOKEN + COINPULSE_ALERT_TELEGRAM_CHAT_ID                  |
| collector | COINPULSE_ALERT_COLLECTOR_WEBHOOK = auto (default: only when no other channel is set),  |
|           | always or never; the URL is COINPULSE_ALERT_COLLECTOR_URL in Grafana's environment     |
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from collector.errors import ConfigError

__all__ = ["CONTACT_POINT", "VARIABLES", "configured_channels", "contact_points", "policies"]

CONTACT_POINT = "coinpulse"
VARIABLES = (
    "COINPULSE_ALERT_EMAIL_TO", "COINPULSE_ALERT_WEBHOOK_URL", "COINPULSE_ALERT_WEBHOOK_BEARER_TOKEN",
    "COINPULSE_ALERT_SLACK_WEBHOOK_URL", "COINPULSE_ALERT_SLACK_TOKEN", "COINPULSE_ALERT_SLACK_CHANNEL",
    "COINPULSE_ALERT_TELEGRAM_BOT_TOKEN", "COINPULSE_ALERT_TELEGRAM_CHAT_ID", "COINPULSE_ALERT_COLLECTOR_WEBHOOK",
    "COINPULSE_ALERT_COLLECTOR_URL",
)
_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
_CHAT_ID = re.compile(r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31})$")
_SLACK_CHANNEL = re.compile(r"^[#@]?[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def _get(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def _ref(name: str) -> str:
    """Grafana's provisioning resolves ``$__env{NAME}`` from its environment (as the datasources do)."""
    return "$__env{" + name + "}"


def _check_url(env: Mapping[str, str], name: str) -> None:
    value = _get(env, name)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: expected an http(s) URL, got {value[:40]!r}")


def configured_channels(env: Mapping[str, str]) -> list[str]:
    """The channels whose variables are set, validated: email, webhook, slack, telegram (in this order)."""
    found = []
    if _get(env, "COINPULSE_ALERT_EMAIL_TO"):
        addresses = [a.strip() for a in re.split(r"[,;\n]", _get(env, "COINPULSE_ALERT_EMAIL_TO")) if a.strip()]
        bad = [a for a in addresses if not _EMAIL.match(a)]
        if not addresses or bad:
            raise ConfigError(f"COINPULSE_ALERT_EMAIL_TO: not email addresses: {', '.join(bad) or '(none)'}")
        if not _get(env, "GF_SMTP_HOST"):
            raise ConfigError("COINPULSE_ALERT_EMAIL_TO is set but GF_SMTP_HOST is not: Grafana sends the mail, set "
                              "its SMTP server (GF_SMTP_HOST=host:port, GF_SMTP_FROM_ADDRESS, GF_SMTP_USER, "
                              "GF_SMTP_PASSWORD)")
        found.append("email")
    if _get(env, "COINPULSE_ALERT_WEBHOOK_URL"):
        _check_url(env, "COINPULSE_ALERT_WEBHOOK_URL")
        found.append("webhook")
    elif _get(env, "COINPULSE_ALERT_WEBHOOK_BEARER_TOKEN"):
        raise ConfigError("COINPULSE_ALERT_WEBHOOK_BEARER_TOKEN is set without COINPULSE_ALERT_WEBHOOK_URL")
    if _get(env, "COINPULSE_ALERT_SLACK_WEBHOOK_URL"):
        _check_url(env, "COINPULSE_ALERT_SLACK_WEBHOOK_URL")
        found.append("slack")
    elif _get(env, "COINPULSE_ALERT_SLACK_TOKEN") or _get(env, "COINPULSE_ALERT_SLACK_CHANNEL"):
        if not (_get(env, "COINPULSE_ALERT_SLACK_TOKEN") and _get(env, "COINPULSE_ALERT_SLACK_CHANNEL")):
            raise ConfigError("Slack: set COINPULSE_ALERT_SLACK_WEBHOOK_URL (an incoming webhook), or both "
                              "COINPULSE_ALERT_SLACK_TOKEN and COINPULSE_ALERT_SLACK_CHANNEL")
        if not _SLACK_CHANNEL.match(_get(env, "COINPULSE_ALERT_SLACK_CHANNEL")):
            raise ConfigError("COINPULSE_ALERT_SLACK_CHANNEL: expected a channel name or id such as #alerts")
        found.append("slack")
    if _get(env, "COINPULSE_ALERT_TELEGRAM_BOT_TOKEN") or _get(env, "COINPULSE_ALERT_TELEGRAM_CHAT_ID"):
        if not (_get(env, "COINPULSE_ALERT_TELEGRAM_BOT_TOKEN") and _get(env, "COINPULSE_ALERT_TELEGRAM_CHAT_ID")):
            raise ConfigError("Telegram: set both COINPULSE_ALERT_TELEGRAM_BOT_TOKEN and "
                              "COINPULSE_ALERT_TELEGRAM_CHAT_ID")
        if not _CHAT_ID.match(_get(env, "COINPULSE_ALERT_TELEGRAM_CHAT_ID")):
            raise ConfigError("COINPULSE_ALERT_TELEGRAM_CHAT_ID: expected a numeric chat id (-100...) or @channelname")
        found.append("telegram")
    return found


def _collector_wanted(env: Mapping[str, str], channels: list[str]) -> bool:
    mode = _get(env, "COINPULSE_ALERT_COLLECTOR_WEBHOOK").lower() or "auto"
    if mode not in ("auto", "always", "never"):
        raise ConfigError(f"COINPULSE_ALERT_COLLECTOR_WEBHOOK: expected auto, always or never, got {mode!r}")
    if _get(env, "COINPULSE_ALERT_COLLECTOR_URL"):
        _check_url(env, "COINPULSE_ALERT_COLLECTOR_URL")
    if mode == "never" and not channels:
        raise ConfigError("COINPULSE_ALERT_COLLECTOR_WEBHOOK=never and no channel is configured: set one "
                          "(COINPULSE_ALERT_EMAIL_TO, _WEBHOOK_URL, _SLACK_WEBHOOK_URL, _TELEGRAM_BOT_TOKEN...)")
    return mode == "always" or (mode == "auto" and not channels)


_TITLE = '{{ template "coinpulse.title" . }}'
_TEXT = '{{ template "coinpulse.text" . }}'


def _integration(channel: str, env: Mapping[str, str]) -> dict[str, Any]:
    if channel == "email":
        settings: dict[str, Any] = {"addresses": _ref("COINPULSE_ALERT_EMAIL_TO"), "singleEmail": True,
                                    "subject": _TITLE, "message": _TEXT}
        return {"uid": "coinpulse-email", "type": "email", "settings": settings}
    if channel == "webhook":
        settings = {"url": _ref("COINPULSE_ALERT_WEBHOOK_URL"), "httpMethod": "POST", "title": _TITLE,
                    "message": _TEXT}
        if _get(env, "COINPULSE_ALERT_WEBHOOK_BEARER_TOKEN"):
            settings["authorization_scheme"] = "Bearer"
            settings["authorization_credentials"] = _ref("COINPULSE_ALERT_WEBHOOK_BEARER_TOKEN")
        return {"uid": "coinpulse-webhook", "type": "webhook", "settings": settings}
    if channel == "slack":
        if _get(env, "COINPULSE_ALERT_SLACK_WEBHOOK_URL"):
            settings = {"url": _ref("COINPULSE_ALERT_SLACK_WEBHOOK_URL")}
        else:
            settings = {"token": _ref("COINPULSE_ALERT_SLACK_TOKEN"),
                        "recipient": _ref("COINPULSE_ALERT_SLACK_CHANNEL")}
        settings |= {"username": "CoinPulse", "title": '{{ template "coinpulse.slack.title" . }}',
                     "text": '{{ template "coinpulse.slack.text" . }}'}
        return {"uid": "coinpulse-slack", "type": "slack", "settings": settings}
    if channel == "telegram":
        settings = {"bottoken": _ref("COINPULSE_ALERT_TELEGRAM_BOT_TOKEN"),
                    "chatid": _ref("COINPULSE_ALERT_TELEGRAM_CHAT_ID"), "parse_mode": "HTML",
                    "disable_web_page_preview": True, "message": '{{ template "coinpulse.telegram.message" . }}'}
        return {"uid": "coinpulse-telegram", "type": "telegram", "settings": settings}
    if channel == "collector":
        # The collector logs and counts what it receives (POST /alerts, coinpulse_alert_notifications_total).
        settings = {"url": _ref("COINPULSE_ALERT_COLLECTOR_URL"), "httpMethod": "POST", "title": _TITLE,
                    "message": _TEXT}
        return {"uid": "coinpulse-collector", "type": "webhook", "settings": settings}
    raise ValueError(channel)  # pragma: no cover - callers pass the names above


def contact_points(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The one contact point ``coinpulse``: an integration per configured channel (ConfigError if misconfigured)."""
    channels = configured_channels(env)
    if _collector_wanted(env, channels):
        channels.append("collector")
    return [{"orgId": 1, "name": CONTACT_POINT, "receivers": [_integration(c, env) for c in channels]}]


def policies() -> list[dict[str, Any]]:
    """Everything to ``coinpulse``; user thresholds one message per threshold; critical ones repeated hourly."""
    return [{
        "orgId": 1,
        "receiver": CONTACT_POINT,
        "group_by": ["grafana_folder", "alertname"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": [
            {"receiver": CONTACT_POINT, "object_matchers": [["coinpulse_area", "=", "thresholds"]],
             "group_by": ["alertname", "threshold_id"], "group_wait": "10s", "group_interval": "1m",
             "repeat_interval": "12h", "continue": False,
             "routes": [{"receiver": CONTACT_POINT, "object_matchers": [["severity", "=", "critical"]],
                         "repeat_interval": "1h"}]},
            {"receiver": CONTACT_POINT, "object_matchers": [["severity", "=", "critical"]],
             "group_wait": "10s", "repeat_interval": "1h", "continue": False},
        ],
    }]
