"""Grafana provisioning and dashboards, checked statically (no Grafana server runs here).

- Every provisioning YAML loads, has ``apiVersion: 1`` and only the keys Grafana's provisioning reader knows
  (grafana/grafana pkg/services/provisioning/{datasources,dashboards}/types.go).
- The two datasources have exactly the uids ``coinpulse-tsdb`` and ``coinpulse-prom``; secrets come from
  ``$__env{...}``/``$__file{...}``, and every variable they read is set by docker-compose.yml and the Helm chart.
- Every file in grafana/dashboards/ (whoever wrote it) validates against Grafana's dashboard schema and its
  panels' options against their panel schemas (tests/fixtures/grafana-schema), has a uid and unique panel ids
  (rows included), and refers to no datasource but the two.
- SQL uses template variables only in forms that are safe for any value (``${var:sqlstring}``, a multi-value
  ``$var`` or ``'$var'``), and puts no ``$`` in comments (Grafana versions differ on stripping comments).
- Every PromQL expression names only metrics the collector exports, read from a live ``/metrics`` scrape.
- PromQL syntax is checked with ``promtool check rules`` when promtool is available.

Executing the SQL against known data is tests/test_grafana_queries.py.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import tools
from collector.http import HttpServer
from collector.metrics import Metrics
from grafana_sql import panel_targets

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
PROVISIONING = GRAFANA / "provisioning"
DASHBOARDS = GRAFANA / "dashboards"
SCHEMAS = Path(__file__).resolve().parent / "fixtures" / "grafana-schema"

TSDB_UID, PROM_UID = "coinpulse-tsdb", "coinpulse-prom"
DS_TYPES = {TSDB_UID: "grafana-postgresql-datasource", PROM_UID: "prometheus"}

# grafana/grafana pkg/services/provisioning/datasources/types.go (configs / upsertDataSourceFromConfigV1)
DATASOURCE_FILE_KEYS = {"apiVersion", "datasources", "deleteDatasources", "prune"}
DATASOURCE_KEYS = {"orgId", "version", "name", "type", "access", "url", "user", "database", "basicAuth",
                   "basicAuthUser", "withCredentials", "isDefault", "correlations", "jsonData", "secureJsonData",
                   "editable", "uid"}
# pkg/services/provisioning/dashboards/types.go (configV1 / configs)
PROVIDER_FILE_KEYS = {"apiVersion", "providers"}
PROVIDER_KEYS = {"name", "type", "orgId", "folder", "folderUid", "editable", "options", "disableDeletion",
                 "updateIntervalSeconds", "allowUiUpdates"}
PROVIDER_OPTION_KEYS = {"path", "foldersFromFilesStructure"}

ENV_REF = re.compile(r"\$__env\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECRET_REF = re.compile(r"^\$__(env|file)\{[^}]+\}$")


def yaml_files() -> list[Path]:
    return sorted(p for p in PROVISIONING.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


@cache
def load_dashboard(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


# ---------------------------------------------------------------------------------------------- provisioning

def test_the_tree_has_provisioning_and_the_four_dashboards_of_this_issue() -> None:
    assert (PROVISIONING / "datasources").is_dir() and (PROVISIONING / "dashboards").is_dir()
    uids = {load_dashboard(p)["uid"] for p in dashboard_files()}
    assert {"coinpulse-market-overview", "coinpulse-asset-detail", "coinpulse-exchanges-markets",
            "coinpulse-pipeline-health"} <= uids


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(GRAFANA)))
def test_every_provisioning_yaml_loads_with_api_version_1(path: Path) -> None:
    data = load_yaml(path)
    assert isinstance(data, dict), "a provisioning file is a mapping"
    assert data.get("apiVersion") == 1


def datasources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        data = load_yaml(path)
        assert set(data) <= DATASOURCE_FILE_KEYS, f"{path.name}: unknown keys {set(data) - DATASOURCE_FILE_KEYS}"
        out += data.get("datasources", [])
    return out


def test_datasources_have_the_two_uids_and_documented_keys() -> None:
    sources = datasources()
    assert sorted(ds["uid"] for ds in sources) == sorted([TSDB_UID, PROM_UID])
    for ds in sources:
        assert set(ds) <= DATASOURCE_KEYS, f"{ds['uid']}: unknown keys {set(ds) - DATASOURCE_KEYS}"
        assert ds["type"] == DS_TYPES[ds["uid"]]
        assert ds["access"] == "proxy" and ds.get("editable") is False and ds.get("name")
    assert len({ds["name"] for ds in sources}) == 2
    assert [ds["uid"] for ds in sources if ds.get("isDefault")] == [TSDB_UID]


def test_timescaledb_datasource_is_read_only_timescale_and_keeps_secrets_out() -> None:
    (ds,) = (d for d in datasources() if d["uid"] == TSDB_UID)
    assert ds["jsonData"]["timescaledb"] is True
    assert ds["jsonData"]["database"], "Grafana's PostgreSQL datasource needs jsonData.database"
    assert ds["jsonData"]["sslmode"] in ("disable", "require", "verify-ca", "verify-full")
    assert "password" not in ds and "password" not in ds["jsonData"]
    assert SECRET_REF.match(ds["secureJsonData"]["password"]), "password must come from $__env{} or $__file{}"
    for value in (ds["url"], ds["user"], ds["jsonData"]["database"]):
        assert ENV_REF.fullmatch(value), f"{value!r}: set from the environment so one file fits compose and Helm"
    # The login role compose creates for Grafana is a member of coinpulse_reader (SELECT only).
    compose = load_yaml(ROOT / "docker-compose.yml")
    env = compose["services"]["grafana"]["environment"]
    user = env[ENV_REF.fullmatch(ds["user"]).group(1)]  # type: ignore[union-attr]
    assert f"GRANT coinpulse_reader TO {user};" in compose["configs"]["db-roles"]["content"]


def test_every_environment_variable_the_provisioning_reads_is_set_by_compose_and_helm() -> None:
    referenced: set[str] = set()
    for path in yaml_files():
        referenced |= set(ENV_REF.findall(path.read_text(encoding="utf-8")))
    grafana = load_yaml(ROOT / "docker-compose.yml")["services"]["grafana"]
    # Secrets are not in compose's environment: the entrypoint exports them from the secrets volume
    # (compose/secrets.sh) before Grafana starts.
    exported = re.findall(r"export ([A-Z_]+)=", " ".join(grafana.get("entrypoint", [])))
    compose_env = {**grafana["environment"], **dict.fromkeys(exported, "from the secrets volume")}
    helm_env = load_yaml(ROOT / "helm" / "coinpulse" / "values.yaml")["grafana"]["envSecret"]["env"]
    datasource_env = set()
    for path in (PROVISIONING / "datasources").glob("*.y*ml"):
        datasource_env |= set(ENV_REF.findall(path.read_text(encoding="utf-8")))
    assert datasource_env and datasource_env <= set(compose_env), sorted(datasource_env - set(compose_env))
    assert datasource_env <= set(helm_env), sorted(datasource_env - set(helm_env))
    assert referenced <= set(compose_env) | set(helm_env), sorted(referenced - set(compose_env) - set(helm_env))


def test_dashboard_provider_reads_grafana_dashboards_into_the_coinpulse_folder() -> None:
    paths = sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
    providers = []
    for path in paths:
        data = load_yaml(path)
        assert set(data) <= PROVIDER_FILE_KEYS
        providers += data["providers"]
    (provider,) = providers
    assert set(provider) <= PROVIDER_KEYS and set(provider["options"]) <= PROVIDER_OPTION_KEYS
    assert provider["type"] == "file" and provider["folder"] == "CoinPulse"
    assert provider["allowUiUpdates"] is False
    # The path is where docker-compose.yml mounts the repository's grafana/dashboards.
    mounts = load_yaml(ROOT / "docker-compose.yml")["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_alerting_provisioning_refers_to_the_two_datasources_only() -> None:
    for path in sorted((PROVISIONING / "alerting").glob("*.y*ml")) if (PROVISIONING / "alerting").is_dir() else []:
        text = path.read_text(encoding="utf-8")
        for uid in re.findall(r"datasourceUid:\s*['\"]?([^'\"\s]+)", text):
            assert uid in (TSDB_UID, PROM_UID, "__expr__", "-100"), f"{path.name}: datasourceUid {uid}"


# ---------------------------------------------------------------------------------------------- dashboards

@cache
def dashboard_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / "dashboard.jsonschema.json").read_text(encoding="utf-8"))
    # Where the schema and Grafana disagree, Grafana wins. The CUE model types a field override's value and a
    # matcher's options as `_` (anything), and Grafana's own dashboards set strings and numbers there
    # ({"id": "byName", "options": "price"}, {"id": "unit", "value": "percent"}), but the generated JSON
    # schema narrowed both to objects. Accept any JSON value in those two places, as Grafana does.
    defs = schema["definitions"]
    for name, prop in (("DynamicConfigValue", "value"), ("MatcherConfig", "options")):
        narrowed = {k: v for k, v in defs[name]["properties"][prop].items() if k != "description"}
        assert narrowed == {"type": "object", "additionalProperties": {}}, f"{name}.{prop} changed: revisit"
        defs[name]["properties"][prop] = {}
    return schema


def _relaxed(node: Any) -> Any:
    if isinstance(node, dict):
        return {("anyOf" if k == "oneOf" else k): _relaxed(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_relaxed(v) for v in node]
    return node


@cache
def panel_schema(panel_type: str) -> dict[str, Any] | None:
    """A panel type's options schema, relaxed where it is stricter than Grafana: no `required` (Grafana fills
    unset options with their defaults when it loads a dashboard), and `oneOf` read as `anyOf` (the variants,
    e.g. a table's cell options, carry no const discriminator, so any {"type": ...} matches all of them)."""
    path = SCHEMAS / f"{panel_type}.jsonschema.json"
    if not path.exists():
        return None
    schema: dict[str, Any] = _relaxed(json.loads(path.read_text(encoding="utf-8")))
    if panel_type == "table":
        # Grafana's table panel writes footer.fields as "" (no field chosen) as well as a list of names.
        fields = schema["definitions"]["TableFooterOptions"]["properties"]["fields"]
        schema["definitions"]["TableFooterOptions"]["properties"]["fields"] = {"anyOf": [fields, {"const": ""}]}
    return schema


DASH_IDS = [p.name for p in dashboard_files()]


@pytest.mark.parametrize("path", dashboard_files(), ids=DASH_IDS)
def test_dashboard_validates_against_grafanas_schema(path: Path) -> None:
    jsonschema.validate(load_dashboard(path), dashboard_schema(), cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("path", dashboard_files(), ids=DASH_IDS)
def test_panel_options_validate_against_their_panel_schemas(path: Path) -> None:
    checked = 0
    for panel in all_panels(load_dashboard(path)["panels"]):
        schema = panel_schema(panel["type"])
        if panel["type"] == "row":
            continue
        assert schema is not None, f"panel type {panel['type']!r}: no vendored schema (add it to fixtures)"
        defs = schema["definitions"]
        ref = {"definitions": defs}
        jsonschema.validate(panel.get("options", {}), {**ref, "$ref": "#/definitions/Options"},
                            cls=jsonschema.Draft7Validator)
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None and "FieldConfig" in defs:
            jsonschema.validate(custom, {**ref, "$ref": "#/definitions/FieldConfig"}, cls=jsonschema.Draft7Validator)
        checked += 1
    assert checked > 0


def test_schema_validation_catches_a_broken_dashboard() -> None:
    broken = copy.deepcopy(load_dashboard(DASHBOARDS / "asset-detail.json"))
    broken["panels"][0]["gridPos"]["w"] = 30  # wider than Grafana's 24 columns
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, dashboard_schema(), cls=jsonschema.Draft7Validator)
    candle = next(p for p in broken["panels"] if p["type"] == "candlestick")
    candle["options"]["mode"] = "candles+bananas"
    schema = panel_schema("candlestick")
    assert schema is not None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(candle["options"], {"definitions": schema["definitions"],
                                                "$ref": "#/definitions/Options"})


def test_dashboards_have_unique_uids_and_titles() -> None:
    dashes = [load_dashboard(p) for p in dashboard_files()]
    uids = [d.get("uid") for d in dashes]
    assert all(isinstance(u, str) and re.fullmatch(r"[A-Za-z0-9_-]{8,40}", u) for u in uids), uids
    assert len(set(uids)) == len(uids)
    titles = [d.get("title") for d in dashes]
    assert all(titles) and len(set(titles)) == len(titles)


@pytest.mark.parametrize("path", dashboard_files(), ids=DASH_IDS)
def test_panel_ids_are_unique_including_rows(path: Path) -> None:
    ids = [p.get("id") for p in all_panels(load_dashboard(path)["panels"])]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("path", dashboard_files(), ids=DASH_IDS)
def test_top_level_panels_do_not_overlap(path: Path) -> None:
    taken: dict[tuple[int, int], int] = {}
    for panel in load_dashboard(path)["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"panel {panel['id']} overlaps panel {taken[(x, y)]} at {(x, y)}"
                taken[(x, y)] = panel["id"]


def datasource_refs(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield where, value
            yield from datasource_refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from datasource_refs(value, f"{where}/{i}")


@pytest.mark.parametrize("path", dashboard_files(), ids=DASH_IDS)
def test_only_the_two_datasources_are_referenced_by_uid(path: Path) -> None:
    dash = load_dashboard(path)
    refs = list(datasource_refs(dash))
    assert refs
    for where, ref in refs:
        assert isinstance(ref, Mapping), f"{where}: reference the datasource as {{type, uid}}, not by name"
        assert ref.get("uid") in DS_TYPES, f"{where}: datasource uid {ref.get('uid')!r}"
        assert ref.get("type") == DS_TYPES[ref["uid"]], f"{where}: type {ref.get('type')!r} for {ref['uid']}"
    for target in panel_targets(dash):
        expected = TSDB_UID if target.language == "sql" else PROM_UID
        assert target.datasource_uid == expected, f"{target.panel_title}/{target.ref_id}"
    for panel in all_panels(dash["panels"]):
        if panel["type"] not in ("row", "text"):
            assert panel.get("targets"), f"panel {panel.get('title')!r} has no query"


# ---------------------------------------------------------------------------------------------- SQL hygiene

VARIABLE_USE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")
COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


@pytest.mark.parametrize("path", dashboard_files(), ids=DASH_IDS)
def test_sql_uses_template_variables_safely(path: Path) -> None:
    """`${v:sqlstring}` quotes and escapes any value; a multi-value `$v` is quoted by the SQL datasource; a
    single-value `$v` is only escaped, so it must sit inside quotes. `:csv`, `:raw` and friends inject text."""
    dash = load_dashboard(path)
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    for target in panel_targets(dash):
        if target.language != "sql":
            continue
        for comment in COMMENT.findall(target.text):
            assert "$" not in comment, f"{target.panel_title}: keep $ out of SQL comments: {comment!r}"
        for m in VARIABLE_USE.finditer(target.text):
            name, fmt = m.group(1) or m.group(2) or m.group(4), m.group(3) or m.group(6)
            if name.startswith("__"):
                continue
            assert name in variables, f"{target.panel_title}: unknown variable {m.group(0)}"
            var = variables[name]
            if fmt == "sqlstring":
                continue
            assert fmt is None, f"{target.panel_title}: {m.group(0)} is not safe in SQL; use ${{{name}:sqlstring}}"
            quoted = target.text[m.start() - 1:m.start()] == "'" and target.text[m.end():m.end() + 1] == "'"
            multi = var.get("multi") or var.get("includeAll")
            assert multi or quoted, f"{target.panel_title}: single-value {m.group(0)} must be written '{m.group(0)}'"
            assert not var.get("allValue"), f"variable {name}: a custom all value is inserted raw into SQL"


# ---------------------------------------------------------------------------------------------- PromQL

@pytest.fixture(scope="module")
def exported_metrics() -> set[str]:
    """Names a Prometheus server scrapes from a live collector /metrics (fresh Metrics(), real HTTP server)."""
    server = HttpServer("127.0.0.1", 0, Metrics(), lambda: {})
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created", ""), "gauge": ("",), "info": ("_info",),
                "unknown": ("",)}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in suffixes[family.type]}
        names |= {s.name for s in family.samples}
    assert "coinpulse_ticks_received_total" in names and "coinpulse_tick_to_commit_seconds_bucket" in names
    return names


PROMQL_WORDS = {"sum", "min", "max", "avg", "count", "by", "without", "rate", "increase", "irate", "delta",
                "histogram_quantile", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "offset", "bool", "topk", "bottomk", "quantile", "time", "vector", "scalar", "abs", "clamp_min",
                "clamp_max", "label_replace", "absent", "changes", "resets", "deriv", "predict_linear",
                "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "last_over_time", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    stripped = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # range selectors
    stripped = re.sub(r"\"[^\"]*\"|'[^']*'", "", stripped)
    words = set(re.findall(r"(?<![\w$])[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    grouped = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", stripped):
        grouped |= {w.strip() for w in group.split(",")}
    return words - PROMQL_WORDS - grouped


def prom_targets() -> list[tuple[str, str]]:
    out = []
    for path in dashboard_files():
        for target in panel_targets(load_dashboard(path)):
            if target.language == "promql":
                out.append((f"{path.name}:{target.panel_title}/{target.ref_id}", target.text))
    return out


def test_metric_name_extraction() -> None:
    assert metric_names('sum by (endpoint, status) (rate(coinpulse_api_requests_total{status!~"2.."}[5m]))') == \
        {"coinpulse_api_requests_total"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(coinpulse_x_bucket[$__rate_interval])))") == \
        {"coinpulse_x_bucket"}
    assert metric_names("max by (feed) (coinpulse_feed_info) == 1") == {"coinpulse_feed_info"}


@pytest.mark.parametrize(("where", "expr"), prom_targets(), ids=[w for w, _ in prom_targets()])
def test_promql_names_only_exported_metrics(where: str, expr: str, exported_metrics: set[str]) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    assert names <= exported_metrics, f"{where}: not exported by the collector: {sorted(names - exported_metrics)}"


def test_promql_parses_with_promtool(tmp_path: Path) -> None:
    tool = tools.promtool()
    if tool is None:
        pytest.skip("promtool not found ($PROMTOOL, PATH, or `scripts/tools promtool` from the Debian "
                    "package prometheus): PromQL syntax not checked")
    rules = []
    for i, (_, expr) in enumerate(prom_targets()):
        concrete = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
        rules.append({"record": f"coinpulse:dashboard_expr_{i}", "expr": concrete})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    done = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
