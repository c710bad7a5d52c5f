"""Command-line tools the tests use that are not Python packages (see scripts/tools)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def promtool() -> str | None:
    """$PROMTOOL, promtool on PATH, or the one `scripts/tools promtool` fetches (Debian's prometheus package,
    into .cache/tools), fetching it now if it can; None when there is none."""
    for candidate in (os.environ.get("PROMTOOL"), shutil.which("promtool")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    done = subprocess.run([str(ROOT / "scripts" / "tools"), "promtool"], capture_output=True, text=True,
                          timeout=600, check=False)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
