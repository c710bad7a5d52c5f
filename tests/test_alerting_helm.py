"""The Helm chart's alerting wiring: the packaged files by default, rendered replacements from values, and the
default contact point's URL (the release's own collector Service) in Grafana's environment Secret."""

from __future__ import annotations

import base64
from pathlib import Path

from collector.alerting import render_files
from test_helm import CHART, chart, helm, one, render  # noqa: F401 - chart and helm are fixtures

ENV = {"COINPULSE_ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x"}


def test_rendered_files_replace_the_packaged_ones(helm: str, chart: Path, tmp_path: Path) -> None:  # noqa: F811
    rendered = render_files(ENV)
    path = tmp_path / "contact-points.yaml"
    path.write_text(rendered["contact-points.yaml"], encoding="utf-8")
    docs = render(helm, chart, "-f", str(CHART / "ci" / "default-values.yaml"),
                  "--set-file", f"grafana.alerting.files.contact-points\\.yaml={path}")
    data = one(docs, "ConfigMap", "-grafana-alerting")["data"]
    assert data["contact-points.yaml"] == rendered["contact-points.yaml"]
    assert "coinpulse-slack" in data["contact-points.yaml"]
    packaged = CHART.parent.parent / "grafana" / "provisioning" / "alerting"
    for name in ("rules.yaml", "templates.yaml", "policies.yaml"):  # the others stay as packaged
        assert data[name] == (packaged / name).read_text(encoding="utf-8")


def test_grafana_env_secret_points_the_default_contact_point_at_the_collector(helm: str, chart: Path) -> None:  # noqa: F811
    values = str(CHART / "ci" / "default-values.yaml")
    docs = render(helm, chart, "-f", values, "--set", "grafana.envSecret.create=true")
    secret = one(docs, "Secret", "-grafana-env")
    url = base64.b64decode(secret["data"]["COINPULSE_ALERT_COLLECTOR_URL"]).decode()
    service = one(docs, "Service", "coinpulse")
    assert url == f"http://{service['metadata']['name']}.monitoring.svc:{service['spec']['ports'][0]['port']}/alerts"
    docs = render(helm, chart, "-f", values, "--set", "grafana.envSecret.create=true",
                  "--set", "grafana.envSecret.env.COINPULSE_ALERT_COLLECTOR_URL=http://elsewhere:9108/alerts")
    secret = one(docs, "Secret", "-grafana-env")
    assert base64.b64decode(secret["data"]["COINPULSE_ALERT_COLLECTOR_URL"]).decode() == "http://elsewhere:9108/alerts"
