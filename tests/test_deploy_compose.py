"""docker-compose.yml, .env.example and prometheus/prometheus.yml, checked without a Docker engine.

What can be checked for real here is: the file against the Compose Specification schema (before and after
interpolation, as `docker compose config` does), the images, the mounts, the documented environment, the
start order the healthchecks and depends_on conditions give, and the scripts and commands the stack runs:
the secrets service's script is executed with sh, the db-roles service's psql script against the real
TimescaleDB with the passwords it made, and the collector then runs as the login role it creates, reading
its password from the libpq password file the secrets script wrote.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import psycopg
import pytest
import yaml
from pydantic import AliasChoices

from collector.settings import _FILE_VARS, Settings, load_settings
from collector_proc import CollectorProcess

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).parent / "fixtures" / "compose-spec" / "compose-spec.json"
SECRETS = ("POSTGRES_PASSWORD", "COINPULSE_COLLECTOR_DB_PASSWORD", "COINPULSE_GRAFANA_DB_PASSWORD",
           "GRAFANA_ADMIN_PASSWORD")
SAMPLE_SECRETS = {name: f"pw-{i}-with $pecial chars: @/'\"" for i, name in enumerate(SECRETS)}

# The intended start order: who waits for whom, and for what.
EXPECTED_DEPENDS_ON = {
    "secrets": {},
    "timescaledb": {"secrets": "service_completed_successfully"},
    "migrate": {"timescaledb": "service_healthy"},
    "db-roles": {"migrate": "service_completed_successfully"},
    "collector": {"timescaledb": "service_healthy", "migrate": "service_completed_successfully",
                  "db-roles": "service_completed_successfully"},
    "prometheus": {"collector": "service_healthy"},
    "grafana": {"timescaledb": "service_healthy", "db-roles": "service_completed_successfully",
                "collector": "service_healthy", "prometheus": "service_healthy",
                "alerting": "service_completed_successfully"},
    "alerting": {},  # `coinpulse alerting render` into the grafana-alerting volume (issue 7)
}
START_ORDER = [["alerting", "secrets"], ["timescaledb"], ["migrate"], ["db-roles"], ["collector"], ["prometheus"],
               ["grafana"]]


# -- compose interpolation, as the Compose Specification defines it -----------------------------------------

class MissingVariable(Exception):
    pass


_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


def interpolate_text(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("named"):
            return env.get(match.group("named"), "")
        braced = _BRACED.match(match.group("braced"))
        assert braced, f"bad interpolation ${{{match.group('braced')}}}"
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return interpolate_text(arg, env) if unset_or_empty else value or ""
        if op in (":?", "?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return value or ""
        if op in (":+", "+"):
            return "" if unset_or_empty else interpolate_text(arg, env)
        return value or ""

    return _TOKEN.sub(one, text)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return node


def variables_in(node: Any) -> set[str]:
    if isinstance(node, str):
        found = set()
        for match in _TOKEN.finditer(node):
            if match.group("named"):
                found.add(match.group("named"))
            elif match.group("braced") is not None:
                braced = _BRACED.match(match.group("braced"))
                assert braced
                found.add(braced.group("name"))
        return found
    if isinstance(node, dict):
        return set().union(*(variables_in(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(variables_in(v) for v in node)) if node else set()
    return set()


# -- fixtures and helpers -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))  # resolves the YAML merge keys (<<)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def env_example() -> dict[str, str]:
    """Every VAR=value line of .env.example, commented out or not."""
    found = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def active_env_example() -> dict[str, str]:
    """What `docker compose` would read from .env.example copied to .env (uncommented lines only)."""
    return {m.group(1): m.group(2) for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
            if (m := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line))}


def collector_env_vars() -> set[str]:
    """Every environment variable collector.settings reads, derived from the Settings model."""
    names = set()
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.add(str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"COINPULSE_{field.upper()}")
    names |= {f"{var}_FILE" for var in _FILE_VARS}
    return names


def service_env(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment is written as a mapping"
    return env


# -- the file itself ----------------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = jsonschema.Draft7Validator(yaml.safe_load(SCHEMA.read_text(encoding="utf-8")))
    errors = sorted(schema.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # ... and so does what compose runs, once .env is read (no variable may leave a malformed value).
    resolved = interpolate(compose, {**active_env_example(), **SAMPLE_SECRETS})
    errors = sorted(schema.iter_errors(resolved), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_a_schema_violation_would_be_caught(compose: dict[str, Any]) -> None:
    """The validation above is not vacuous: a typo in a service key is an error."""
    schema = jsonschema.Draft7Validator(yaml.safe_load(SCHEMA.read_text(encoding="utf-8")))
    broken = {**compose, "services": {**compose["services"], "collector": {
        **compose["services"]["collector"], "healthchek": {"test": ["CMD", "true"]}}}}
    assert any("healthchek" in e.message for e in schema.iter_errors(broken))


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        repository, _, tag = image.partition("@")[0].rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: image {image!r} is not pinned to a tag"
        if "build" in service:  # our own image: tagged with the project's version
            assert image == f"coinpulse-collector:{version}", name
        else:
            assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image!r} is not pinned to an exact version"
    assert services["db-roles"]["image"] == services["timescaledb"]["image"]  # its psql matches the server
    assert services["grafana"]["image"].startswith("grafana/grafana:")  # the OSS image
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")  # full edition, not -oss


def test_every_mounted_path_exists(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    named = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":") if isinstance(volume, str) else (
                volume["source"], volume["target"])
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist in the repository"
                assert mode == ["ro"], f"{name}: {source} must be mounted read-only"  # nothing written to the repo
            else:
                assert source in named, f"{name}: volume {source} is not declared"
            assert target.startswith("/"), target
        for config in service.get("configs", []):
            assert config["source"] in compose["configs"], f"{name}: config {config['source']} is not declared"
        if "build" in service:
            context = service["build"] if isinstance(service["build"], str) else service["build"]["context"]
            assert (ROOT / context / "Dockerfile").is_file()
    # Everything the stack keeps lives in named volumes, so `docker compose down -v` leaves nothing behind.
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith((".", "/"))}
    assert used == named


def test_every_collector_setting_is_documented_in_env_example() -> None:
    documented = set(env_example())
    missing = collector_env_vars() - documented
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_every_compose_variable_is_documented_in_env_example(compose: dict[str, Any]) -> None:
    missing = variables_in(compose) - set(env_example())
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_the_collector_receives_every_setting(services: dict[str, dict[str, Any]]) -> None:
    """A setting put in .env must reach the collector: passed through by name, or fixed by the stack."""
    env = service_env(services["collector"])
    missing = collector_env_vars() - set(env) - {f"{var}_FILE" for var in _FILE_VARS}
    assert not missing, f"add to x-collector-settings in docker-compose.yml: {sorted(missing)}"
    fixed = {k for k, v in env.items() if v is not None}
    assert fixed == {"COINPULSE_DATABASE_URL", "PGPASSFILE", "COINPULSE_METRICS_HOST", "COINPULSE_METRICS_PORT",
                     "COINPULSE_SPOOL_DIR"}


def test_the_stack_needs_no_env_file_and_bakes_in_no_password(compose: dict[str, Any]) -> None:
    """`docker compose up` without .env: nothing is required (the secrets service makes the passwords), and
    a password variable set in .env reaches only the secrets service, passed through as given."""
    interpolate(compose, {})  # no ${VAR:?...}: nothing refuses to start
    example = env_example()
    for name in SECRETS:
        assert example[name] == "", f".env.example must not ship a value for {name}"
        assert name not in active_env_example(), f"{name} is optional: commented out in .env.example"
    secrets = compose["services"]["secrets"]
    assert service_env(secrets) == {name: f"${{{name}:-}}" for name in SECRETS}
    for name, service in compose["services"].items():
        for key, value in service_env(service).items():
            if name != "secrets" and re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", key) and value is not None:
                assert key.endswith("__FILE") or key.endswith("_FILE"), f"{name}.{key} = {value!r}"
            if value is not None and key != "GF_SECURITY_ADMIN_USER":
                assert not variables_in(value) & set(SECRETS) or name == "secrets", f"{name}.{key}"


def secrets_script_argv() -> list[str]:
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no POSIX sh on PATH: compose/secrets.sh cannot be executed here")
    return [sh, str(ROOT / "compose" / "secrets.sh")]


def run_secrets(directory: Path, env: dict[str, str]) -> str:
    """Run compose/secrets.sh as the secrets service does, into ``directory``; its output."""
    if os.geteuid() != 0:
        pytest.skip("compose/secrets.sh chowns the libpq password files to the collector's user: needs root")
    done = subprocess.run(secrets_script_argv(), env={"PATH": os.environ["PATH"], "COINPULSE_SECRETS_DIR":
                          str(directory), **env}, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_secrets_are_generated_once_kept_and_overridden_by_env(
        compose: dict[str, Any], tmp_path: Path) -> None:
    service = compose["services"]["secrets"]
    assert service["entrypoint"] == ["/bin/sh", "/compose/secrets.sh"] and service["restart"] == "no"
    assert "./compose/secrets.sh:/compose/secrets.sh:ro" in service["volumes"]
    files = ("postgres_password", "collector_db_password", "grafana_db_password", "grafana_admin_password")
    out = run_secrets(tmp_path, {})
    first = {f: (tmp_path / f).read_text() for f in files}
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", v) for v in first.values()), "32 random alphanumerics each"
    assert len(set(first.values())) == 4
    for f in files:
        assert f"{f} generated" in out and first[f] not in out  # said, never shown
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o644
    # The next start keeps them ...
    out = run_secrets(tmp_path, {})
    assert {f: (tmp_path / f).read_text() for f in files} == first and "kept" in out
    # ... and a password set in .env wins.
    out = run_secrets(tmp_path, {"GRAFANA_ADMIN_PASSWORD": SAMPLE_SECRETS["GRAFANA_ADMIN_PASSWORD"]})
    assert (tmp_path / "grafana_admin_password").read_text() == SAMPLE_SECRETS["GRAFANA_ADMIN_PASSWORD"]
    assert "grafana_admin_password from GRAFANA_ADMIN_PASSWORD" in out
    assert (tmp_path / "postgres_password").read_text() == first["postgres_password"]
    # libpq password files: private to the collector image's user, `\` and `:` escaped.
    run_secrets(tmp_path, {"COINPULSE_COLLECTOR_DB_PASSWORD": "a:b\\c d"})
    pgpass = tmp_path / "collector.pgpass"
    assert pgpass.read_text() == "*:*:*:coinpulse_collector:a\\:b\\\\c d\n"
    assert pgpass.stat().st_mode & 0o777 == 0o600 and (pgpass.stat().st_uid, pgpass.stat().st_gid) == (10001, 10001)
    assert (tmp_path / "migrate.pgpass").read_text() == f"*:*:*:postgres:{first['postgres_password']}\n"


def test_healthchecks_and_conditions_give_the_intended_start_order(services: dict[str, dict[str, Any]]) -> None:
    got = {name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
           for name, service in services.items()}
    assert got == EXPECTED_DEPENDS_ON
    for name, deps in got.items():
        for dep, condition in deps.items():
            if condition == "service_healthy":
                check = services[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{name} waits for {dep}'s healthcheck"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot: it must not restart"
    levels, placed = [], set()
    while len(placed) < len(got):
        level = sorted(n for n, deps in got.items() if n not in placed and set(deps) <= placed)
        assert level, f"dependency cycle among {set(got) - placed}"
        levels.append(level)
        placed |= set(level)
    assert levels == START_ORDER


def test_healthchecks_ask_the_right_ports(services: dict[str, dict[str, Any]]) -> None:
    collector = services["collector"]
    port = service_env(collector)["COINPULSE_METRICS_PORT"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(collector["healthcheck"]["test"])
    assert any(p.endswith(f":{port}") for p in collector["ports"])
    timescale = services["timescaledb"]["healthcheck"]["test"]
    assert "pg_isready" in timescale and "127.0.0.1" in timescale  # over TCP, not the init-time socket
    assert "/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])
    assert "/-/ready" in " ".join(services["prometheus"]["healthcheck"]["test"])


def test_prometheus_scrapes_the_collector(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    port = service_env(services["collector"])["COINPULSE_METRICS_PORT"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["coinpulse-collector"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"collector:{port}"]
    assert jobs["coinpulse-collector"].get("metrics_path", "/metrics") == "/metrics"
    command = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def test_collector_and_migrate_environments_are_valid_settings(
        compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    resolved = interpolate(compose, {**active_env_example(), **SAMPLE_SECRETS})["services"]
    for name, pgpass in (("collector", "collector.pgpass"), ("migrate", "migrate.pgpass")):
        env = {k: str(v) for k, v in service_env(resolved[name]).items() if v is not None}
        settings = load_settings(env)
        url = urlsplit(settings.database_url.get_secret_value())
        assert url.hostname == "timescaledb" and url.path == "/coinpulse" and url.password is None
        # the password travels outside the URL, in the libpq password file compose/secrets.sh writes
        assert env["PGPASSFILE"] == f"/run/coinpulse-secrets/{pgpass}"
        assert "secrets:/run/coinpulse-secrets:ro" in resolved[name]["volumes"]
    assert urlsplit(service_env(services["collector"])["COINPULSE_DATABASE_URL"]).username == "coinpulse_collector"
    assert services["migrate"]["command"] == ["migrate"] and services["collector"]["command"] == ["run"]


def test_grafana_gets_what_its_provisioning_reads(services: dict[str, dict[str, Any]]) -> None:
    """Every environment variable the provisioning files reference is set on the grafana service, and the
    dashboard provider's path is where the dashboards are mounted."""
    provisioning = ROOT / "grafana" / "provisioning"
    assert provisioning.is_dir()
    grafana = services["grafana"]
    env = dict(service_env(grafana))
    # The datasource password is exported by the entrypoint, from the secrets volume, before Grafana starts.
    entrypoint = interpolate_text(" ".join(grafana["entrypoint"]), {})  # $$ -> $, as compose does
    exported = re.findall(r"export ([A-Z_]+)=\"\$\(cat /run/coinpulse-secrets/[a-z_]+\)\"", entrypoint)
    assert exported == ["COINPULSE_GRAFANA_DB_PASSWORD"] and entrypoint.endswith("exec /run.sh")
    env |= dict.fromkeys(exported, "from the secrets volume")
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/coinpulse-secrets/grafana_admin_password"
    referenced: set[str] = set()
    for path in provisioning.rglob("*.y*ml"):
        text = path.read_text(encoding="utf-8")
        if path.parent.name == "alerting":  # its $labels, $values, $A are Go templates and expressions, not
            # environment variables: tests/test_alerting_provisioning.py checks what Grafana interpolates there
            referenced |= set(re.findall(r"\$__env\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
            continue
        referenced |= set(re.findall(r"\$__env\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
        referenced |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
        referenced |= {m for m in re.findall(r"(?<![$\\])\$([A-Za-z_][A-Za-z0-9_]*)", text) if m != "__env"}
    referenced = {name for name in referenced if not name.startswith("__")}
    assert referenced <= set(env), f"set on the grafana service: {sorted(referenced - set(env))}"
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"] if v.startswith(".")}
    for path in (provisioning / "dashboards").glob("*.y*ml"):
        for provider in yaml.safe_load(path.read_text(encoding="utf-8")).get("providers", []):
            assert provider["options"]["path"].rstrip("/") == mounts["./grafana/dashboards"], path


# -- what the stack runs, executed ---------------------------------------------------------------------------

def psql_binary() -> str:
    candidates = [shutil.which("psql"), *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin/psql")))]
    for candidate in filter(None, candidates):
        out = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"(\d+)\.", out)
        if match and int(match.group(1)) >= 15:  # \getenv is psql 15+
            return candidate
    pytest.skip("psql 15 or later not found: the db-roles script cannot be executed here")


def run_db_roles(compose: dict[str, Any], url: str, tmp_path: Path, passwords: dict[str, str]) -> Path:
    """Make the passwords as the secrets service does (``passwords``: its environment), then run the db-roles
    service's own command (entrypoint + command + its config) against ``url``; the secrets directory."""
    secrets = tmp_path / "secrets"
    run_secrets(secrets, passwords)
    service = compose["services"]["db-roles"]
    assert "secrets:/run/coinpulse-secrets:ro" in service["volumes"]
    script = tmp_path / "db-roles.sql"
    script.write_text(compose["configs"]["db-roles"]["content"].replace("/run/coinpulse-secrets", str(secrets)),
                      encoding="utf-8")
    target = service["configs"][0]["target"]
    argv = [psql_binary() if part == "psql" else part for part in service["entrypoint"]]
    argv += [str(script) if part == target else part for part in service["command"]]
    parts = urlsplit(url)
    env = {k: str(v) for k, v in interpolate(service["environment"], {}).items()}
    assert env.pop("PGPASSFILE") == "/run/coinpulse-secrets/migrate.pgpass"  # the superuser: here, the harness's
    env |= {"PGHOST": parts.hostname or "", "PGPORT": str(parts.port or 5432), "PGUSER": parts.username or "",
            "PGDATABASE": parts.path.lstrip("/"), "PGPASSWORD": parts.password or "", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return secrets


def password_matches(verifier: str, user: str, password: str) -> bool:
    """Does PostgreSQL's stored verifier (pg_authid.rolpassword) accept ``password``?"""
    if verifier.startswith("md5"):
        return verifier == "md5" + hashlib.md5((password + user).encode()).hexdigest()
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier)
    assert match, verifier
    iterations, salt, stored = int(match.group(1)), base64.b64decode(match.group(2)), match.group(3)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored


@pytest.fixture
def login_roles(db_url: str) -> Iterator[str]:
    yield db_url
    with psycopg.connect(db_url, autocommit=True) as conn:
        for role in ("coinpulse_collector", "coinpulse_grafana"):  # roles are cluster-wide: leave none behind
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(f"DROP OWNED BY {role}")
                conn.execute(f"DROP ROLE {role}")


def role_facts(conn: psycopg.Connection[tuple[Any, ...]], role: str) -> tuple[bool, str, list[str], list[str]]:
    row = conn.execute(
        "SELECT rolcanlogin, rolpassword, "
        "       ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "             WHERE m.member = a.oid ORDER BY 1), "
        "       coalesce((SELECT setconfig FROM pg_db_role_setting WHERE setrole = a.oid AND setdatabase = 0), "
        "                '{}') "
        "FROM pg_authid a WHERE rolname = %s", (role,)).fetchone()
    assert row is not None, f"role {role} missing"
    return bool(row[0]), str(row[1]), list(row[2]), list(row[3])


def test_db_roles_script_creates_login_roles_with_the_env_passwords(
        compose: dict[str, Any], login_roles: str, tmp_path: Path) -> None:
    url = login_roles
    first = {"COINPULSE_COLLECTOR_DB_PASSWORD": "collector-pw-1 with space", "COINPULSE_GRAFANA_DB_PASSWORD": "g'r$1"}
    run_db_roles(compose, url, tmp_path, first)
    with psycopg.connect(url, autocommit=True) as conn:
        can_login, verifier, groups, config = role_facts(conn, "coinpulse_collector")
        assert can_login and groups == ["coinpulse_writer"] and config == ["search_path=coinpulse, public"]
        assert password_matches(verifier, "coinpulse_collector", first["COINPULSE_COLLECTOR_DB_PASSWORD"])
        assert not password_matches(verifier, "coinpulse_collector", "something else")
        can_login, verifier, groups, config = role_facts(conn, "coinpulse_grafana")
        assert can_login and groups == ["coinpulse_reader"]
        assert config == ["search_path=coinpulse, public", "jit=off", "max_parallel_workers_per_gather=0"]
        assert password_matches(verifier, "coinpulse_grafana", first["COINPULSE_GRAFANA_DB_PASSWORD"])
    # Every `docker compose up` runs it again: idempotent, and a changed password in .env takes effect.
    second = {"COINPULSE_COLLECTOR_DB_PASSWORD": "collector-pw-2", "COINPULSE_GRAFANA_DB_PASSWORD": "grafana-pw-2"}
    run_db_roles(compose, url, tmp_path, second)
    with psycopg.connect(url, autocommit=True) as conn:
        _, verifier, groups, _ = role_facts(conn, "coinpulse_collector")
        assert groups == ["coinpulse_writer"]
        assert password_matches(verifier, "coinpulse_collector", "collector-pw-2")


def test_grafana_role_reads_but_cannot_write(compose: dict[str, Any], login_roles: str, tmp_path: Path) -> None:
    secrets = run_db_roles(compose, login_roles, tmp_path, {})
    parts = urlsplit(login_roles)
    grafana_url = parts._replace(netloc=f"coinpulse_grafana@{parts.hostname}:{parts.port}").geturl()
    with psycopg.connect(login_roles, autocommit=True) as admin:
        admin.execute("INSERT INTO coinpulse.assets (asset_id, symbol) VALUES ('bitcoin', 'BTC')")
        admin.execute("INSERT INTO coinpulse.price_ticks VALUES (now(), 'bitcoin', 90000, 'demo')")
    with psycopg.connect(grafana_url, password=(secrets / "grafana_db_password").read_text(),
                         autocommit=True) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("coinpulse, public",)
        assert conn.execute("SHOW jit").fetchone() == ("off",)
        assert conn.execute("SHOW max_parallel_workers_per_gather").fetchone() == ("0",)
        assert conn.execute("SELECT asset_id, price_usd FROM latest_prices").fetchall() == [("bitcoin", 90000.0)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO price_ticks VALUES (now(), 'ethereum', 3000, 'demo')")


def test_collector_runs_as_the_least_privileged_login_role(
        compose: dict[str, Any], login_roles: str, tmp_path: Path) -> None:
    """The compose collector connects as coinpulse_collector (member of coinpulse_writer), not a superuser:
    `coinpulse run` must write every table with exactly those rights."""
    secrets = run_db_roles(compose, login_roles, tmp_path, {})
    parts = urlsplit(login_roles)
    collector_url = parts._replace(netloc=f"coinpulse_collector@{parts.hostname}:{parts.port}").geturl()
    tables = ("price_ticks", "asset_snapshots", "exchange_snapshots", "market_snapshots", "rate_snapshots")

    def counts() -> dict[str, int]:
        with psycopg.connect(login_roles) as conn:
            return {t: int(str(conn.execute(f"SELECT count(*) FROM coinpulse.{t}").fetchone()[0]))  # type: ignore[index]
                    for t in tables}

    proc = CollectorProcess({"COINPULSE_DATABASE_URL": collector_url, "COINPULSE_FEED": "demo",
                             "PGPASSFILE": str(secrets / "collector.pgpass"),
                             "COINPULSE_DEMO_TICK_INTERVAL": "0.1"}, tmp_path).start()
    try:
        proc.wait_for(lambda: all(n > 0 for n in counts().values()), timeout=30, what="rows in every table")
        proc.wait_for(lambda: proc.health()[0] == 200, timeout=10, what="healthy")
        with psycopg.connect(login_roles) as conn:
            users = {r[0] for r in conn.execute(
                "SELECT usename FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'coinpulse%'")}
        assert users == {"coinpulse_collector"}
    finally:
        code = proc.stop()
    assert code == 0, proc.log
    assert "Traceback" not in proc.log and "permission denied" not in proc.log
