"""The notification templates (templates.tmpl beside this file) as Grafana provisioning entries."""

from __future__ import annotations

from importlib import resources
from typing import Any

__all__ = ["TEMPLATE_GROUP", "template_text", "templates"]

TEMPLATE_GROUP = "coinpulse"


def template_text() -> str:
    return resources.files("collector.alerting").joinpath("templates.tmpl").read_text(encoding="utf-8")


def templates() -> list[dict[str, Any]]:
    return [{"orgId": 1, "name": TEMPLATE_GROUP, "template": template_text()}]
