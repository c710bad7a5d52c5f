"""Settings: defaults, env names, one clear line per bad value, secrets never shown."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from collector.errors import ConfigError
from collector.settings import load_settings, redact_url


def test_defaults_follow_the_contract() -> None:
    s = load_settings({})
    assert s.metrics_port == 9108
    assert s.coincap_rest_url == "https://rest.coincap.io/v3"
    assert s.coincap_ws_url == "wss://wss.coincap.io"
    assert s.feed == "auto" and s.resolved_feed == "demo"  # no key: the demo feed
    assert s.assets == "ALL"


def test_env_names_and_auto_feed_with_key() -> None:
    s = load_settings({"COINCAP_API_KEY": "k", "COINPULSE_ASSETS": "bitcoin, Ethereum ,solana",
                       "COINCAP_REST_URL": "http://127.0.0.1:9/v3/", "COINPULSE_METRICS_PORT": "9200"})
    assert s.resolved_feed == "ws"
    assert s.assets == ("bitcoin", "ethereum", "solana")
    assert s.coincap_rest_url == "http://127.0.0.1:9/v3"
    assert s.metrics_port == 9200


@pytest.mark.parametrize(("env", "names"), [
    ({"COINPULSE_METRICS_PORT": "http"}, "COINPULSE_METRICS_PORT"),
    ({"COINPULSE_METRICS_PORT": "70000"}, "COINPULSE_METRICS_PORT"),
    ({"COINPULSE_FEED": "kafka"}, "COINPULSE_FEED"),
    ({"COINPULSE_ASSETS": "bitcoin,BTC/USD"}, "COINPULSE_ASSETS"),
    ({"COINPULSE_DATABASE_URL": "mysql://x"}, "COINPULSE_DATABASE_URL"),
    ({"COINCAP_REST_URL": "rest.coincap.io"}, "COINCAP_REST_URL"),
])
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert str(err.value).startswith(names + ":")
    assert "\n" not in str(err.value)


def test_feed_needing_a_key_says_so() -> None:
    s = load_settings({"COINPULSE_FEED": "rest"})
    with pytest.raises(ConfigError, match="COINCAP_API_KEY is not set"):
        s.require_api_key("COINPULSE_FEED=rest reads CoinCap")


def test_secrets_not_in_repr_or_errors(tmp_path: Path) -> None:
    s = load_settings({"COINCAP_API_KEY": "sk-very-secret",
                       "COINPULSE_DATABASE_URL": "postgresql://u:pw-secret@db/x"})
    assert "sk-very-secret" not in repr(s) and "pw-secret" not in repr(s)
    with pytest.raises(ConfigError) as err:
        load_settings({"COINPULSE_DATABASE_URL": "mysql://u:pw-secret@db/x"})
    assert "pw-secret" not in str(err.value)
    assert redact_url("postgresql://u:pw-secret@db:5432/x") == "postgresql://u:***@db:5432/x"


def test_secrets_from_files(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("from-file\n")
    s = load_settings({"COINCAP_API_KEY_FILE": str(key)})
    assert s.coincap_api_key is not None and s.coincap_api_key.get_secret_value() == "from-file"
    with pytest.raises(ConfigError, match="COINCAP_API_KEY_FILE: cannot read"):
        load_settings({"COINCAP_API_KEY_FILE": str(tmp_path / "missing")})


def test_cli_prints_one_line_not_a_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "COINPULSE_METRICS_PORT": "nope", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "collector.cli", "run"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "coinpulse run: error: COINPULSE_METRICS_PORT: Input should be a valid integer, unable to parse string "
        "as an integer (got 'nope')"]
    assert "Traceback" not in proc.stderr


def test_logging_never_formats_the_key(caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings({"COINCAP_API_KEY": "sk-very-secret"})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings=%s key=%s", s, s.coincap_api_key)
    assert "sk-very-secret" not in caplog.text
