"""Finding a real TimescaleDB for the tests (DESIGN.md, "Testing").

In order: ``COINPULSE_TEST_DATABASE_URL``; a testcontainers TimescaleDB when the ``testcontainers``
package is installed and a Docker engine answers; else a throwaway local cluster (initdb + pg_ctl on a
free port, timescaledb preloaded) started here and removed at the end of the session.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import yaml
from psycopg import sql


def compose_timescale_image() -> str:
    """The TimescaleDB image docker-compose.yml runs: tests on Docker use the database users get."""
    compose = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
    return str(compose["services"]["timescaledb"]["image"])


TIMESCALE_IMAGE = compose_timescale_image()


@dataclass
class Server:
    admin_url: str | None = None  # URL of a database we may CREATE DATABASE from
    how: str = ""
    skip_reason: str | None = None
    version: str | None = None
    license: str | None = None
    postgres: str | None = None  # server_version, e.g. "15.18 (Debian 15.18-0+deb12u1)"
    _cleanup: list[Any] = field(default_factory=list)

    @property
    def full_edition(self) -> bool:
        return self.license == "timescale"

    def url(self, dbname: str) -> str:
        assert self.admin_url is not None
        # A URL (not key=value), because that is what COINPULSE_DATABASE_URL accepts.
        parts = urlsplit(self.admin_url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("COINPULSE_TEST_DATABASE_URL must be a postgresql:// URL")
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))

    def fresh_database(self, dbname: str) -> str:
        """Drop ``dbname`` if it exists, create it empty, and return its URL (benchmarks start from scratch)."""
        assert self.admin_url is not None
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.url(dbname)

    def stop(self) -> None:
        while self._cleanup:
            fn = self._cleanup.pop()
            with contextlib.suppress(Exception):
                fn()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindirs() -> list[Path]:
    dirs: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out:
            dirs.append(Path(out))
    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        dirs.append(Path(path))
    return [d for d in dirs if (d / "initdb").exists()]


def _has_timescaledb(bindir: Path) -> bool:
    pkglib = bindir.parent / "lib"
    share = bindir.parent.parent.parent.parent / "share" / "postgresql" / bindir.parent.name / "extension"
    libs = list(pkglib.glob("timescaledb*.so"))
    controls = [share / "timescaledb.control"]
    cfg = bindir / "pg_config"
    if cfg.exists():
        out = subprocess.run([str(cfg), "--pkglibdir", "--sharedir"], capture_output=True, text=True,
                             check=False).stdout.split()
        if len(out) == 2:
            libs += list(Path(out[0]).glob("timescaledb*.so"))
            controls.append(Path(out[1]) / "extension" / "timescaledb.control")
    return bool(libs) and any(c.exists() for c in controls)


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _local_cluster(server: Server) -> None:
    bindirs = [d for d in _pg_bindirs() if _has_timescaledb(d)]
    if not bindirs:
        found = ", ".join(str(d) for d in _pg_bindirs()) or "none"
        server.skip_reason = (
            "no TimescaleDB found: COINPULSE_TEST_DATABASE_URL is unset, no Docker engine answers, and no local "
            f"PostgreSQL has the timescaledb extension installed (PostgreSQL bin dirs found: {found})"
        )
        return
    bindir = bindirs[0]
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            server.skip_reason = "running as root and there is no 'postgres' user to own a throwaway cluster"
            return
        run_as = ["runuser", "-u", "postgres", "--"]
    tmp = Path(tempfile.mkdtemp(prefix="coinpulse-pg-"))
    server._cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    if run_as:
        shutil.chown(tmp, "postgres")
    data, sock = tmp / "data", tmp
    port = _free_port()
    init = subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                           "--no-sync", "-E", "UTF8"], capture_output=True, text=True, check=False)
    if init.returncode != 0:
        server.skip_reason = f"initdb failed: {init.stderr.strip()[-300:]}"
        return
    opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c shared_preload_libraries=timescaledb "
            "-c timescaledb.telemetry_level=off -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c timescaledb.max_background_workers=16 -c max_worker_processes=32")
    start = subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(tmp / "log"),
                            "-o", opts, "start"], capture_output=True, text=True, check=False)
    if start.returncode != 0:
        log = (tmp / "log").read_text(errors="replace")[-500:] if (tmp / "log").exists() else start.stderr
        server.skip_reason = f"could not start a throwaway PostgreSQL: {log.strip()}"
        return
    server._cleanup.append(lambda: subprocess.run(
        [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
        capture_output=True, check=False))
    server.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    server.how = f"throwaway local cluster ({bindir}, port {port})"


def _testcontainer(server: Server) -> bool:
    try:
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-not-found]
    except ImportError:
        return False
    if not _docker_answers():
        return False
    container = PostgresContainer(TIMESCALE_IMAGE, username="postgres", password="postgres", dbname="postgres")
    container.start()
    server._cleanup.append(container.stop)
    url = container.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
    server.admin_url = url
    server.how = f"testcontainers ({TIMESCALE_IMAGE})"
    return True


def _probe(server: Server) -> tuple[str | None, str | None]:
    """The extension version and license, read in a scratch database (the GUCs exist once it is loaded)."""
    assert server.admin_url is not None
    with psycopg.connect(server.admin_url, autocommit=True, connect_timeout=10) as conn:
        server.postgres = str(conn.info.parameter_status("server_version") or "?")
        row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        if row is None or row[0] is None:
            return None, None
        conn.execute("DROP DATABASE IF EXISTS coinpulse_probe WITH (FORCE)")
        conn.execute("CREATE DATABASE coinpulse_probe")
    try:
        with psycopg.connect(server.url("coinpulse_probe"), autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            probe = conn.execute(
                "SELECT extversion, current_setting('timescaledb.license', true) FROM pg_extension "
                "WHERE extname = 'timescaledb'").fetchone()
    finally:
        with psycopg.connect(server.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("DROP DATABASE IF EXISTS coinpulse_probe WITH (FORCE)")
    assert probe is not None
    return str(probe[0]), None if probe[1] is None else str(probe[1])


def find_server() -> Server:
    server = Server()
    env_url = os.environ.get("COINPULSE_TEST_DATABASE_URL")
    if env_url:
        server.admin_url, server.how = env_url, "COINPULSE_TEST_DATABASE_URL"
    elif not _testcontainer(server):
        _local_cluster(server)
    if server.admin_url is None:
        return server
    try:
        row = _probe(server)
    except psycopg.Error as exc:
        server.skip_reason = f"test database at {server.how} is unreachable: {str(exc).strip()[:200]}"
        server.stop()
        server.admin_url = None
        return server
    assert row is not None
    server.version, server.license = row[0], row[1]
    if server.version is None:
        server.skip_reason = f"the test database ({server.how}) has no timescaledb extension available"
        server.admin_url = None
    return server


@contextlib.contextmanager
def benchmark_database(url: str | None, dbname: str) -> Iterator[tuple[str, str]]:
    """For the benchmarks: (``url``, "") when one is given, else (the URL of a fresh, empty ``dbname`` on a
    throwaway TimescaleDB, how it was found), the server stopped on exit. Exits 2 with the reason when there is
    no TimescaleDB to be had."""
    if url is not None:
        yield url, ""
        return
    server = find_server()
    if server.admin_url is None:
        print(f"no TimescaleDB: {server.skip_reason}", file=sys.stderr)
        raise SystemExit(2)
    try:
        yield server.fresh_database(dbname), server.how
    finally:
        server.stop()
