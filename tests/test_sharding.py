"""Scale-out, part 1: which assets each replica streams (collector/sharding.py) and its settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.errors import ConfigError
from collector.settings import load_settings
from collector.sharding import Shard, owner_of, replica_ordinal

ASSETS = [f"asset-{i}" for i in range(2000)]
slugs = st.from_regex(r"[a-z0-9][a-z0-9-]{0,30}", fullmatch=True)

# The owner of an asset must never change between releases or machines: during a rolling upgrade, replicas
# of two versions would otherwise stream the same asset twice or not at all. These were computed once.
GOLDEN = {
    ("bitcoin", 2): 1, ("bitcoin", 3): 1, ("bitcoin", 5): 1,
    ("ethereum", 5): 4, ("dogecoin", 2): 0, ("dogecoin", 3): 2,
}


def test_owners_are_pinned_across_releases() -> None:
    assert {key: owner_of(*key) for key in GOLDEN} == GOLDEN


def test_owners_do_not_depend_on_the_process_hash_seed() -> None:
    """Python's str hash is salted per process; the shard must not be."""
    code = "from collector.sharding import owner_of; print([owner_of(f'asset-{i}', 7) for i in range(300)])"
    outputs = set()
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout)
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([owner_of(f"asset-{i}", 7) for i in range(300)])


@pytest.mark.parametrize("replicas", [1, 2, 3, 5, 8])
def test_every_asset_has_exactly_one_owner(replicas: int) -> None:
    shards = [Shard(i, replicas) for i in range(replicas)]
    shares = [shard.select(ASSETS) for shard in shards]
    assert sum(len(share) for share in shares) == len(ASSETS)
    assert set().union(*map(set, shares)) == set(ASSETS)


@pytest.mark.parametrize("replicas", [2, 3, 4, 7])
def test_assets_spread_evenly(replicas: int) -> None:
    counts = Counter(owner_of(asset, replicas) for asset in ASSETS)
    fair = len(ASSETS) / replicas
    assert set(counts) == set(range(replicas))
    assert all(abs(n - fair) < 0.15 * fair for n in counts.values()), counts


@pytest.mark.parametrize("replicas", [1, 2, 3, 6])
def test_adding_a_replica_moves_only_what_the_new_one_takes(replicas: int) -> None:
    before = {asset: owner_of(asset, replicas) for asset in ASSETS}
    after = {asset: owner_of(asset, replicas + 1) for asset in ASSETS}
    moved = [asset for asset in ASSETS if before[asset] != after[asset]]
    assert all(after[asset] == replicas for asset in moved)  # every move is to the new replica
    share = len(moved) / len(ASSETS)
    assert abs(share - 1 / (replicas + 1)) < 0.05, share  # about 1/(N+1), not most of them as with mod N


@given(st.lists(slugs, max_size=60), st.integers(min_value=1, max_value=9))
def test_select_keeps_order_and_drops_duplicates(assets: list[str], replicas: int) -> None:
    for index in range(replicas):
        share = Shard(index, replicas).select(assets + assets)
        assert list(share) == [a for a in dict.fromkeys(assets) if owner_of(a, replicas) == index]


def test_a_single_replica_owns_everything() -> None:
    shard = Shard()
    assert shard.whole and shard.select(ASSETS) == tuple(ASSETS)
    assert str(Shard(1, 3)) == "1/3"


@pytest.mark.parametrize(("index", "replicas"), [(3, 3), (-1, 2), (0, 0)])
def test_impossible_shards_are_refused(index: int, replicas: int) -> None:
    with pytest.raises(ValueError, match="replica index"):
        Shard(index, replicas)
    if replicas < 1:
        with pytest.raises(ValueError, match="at least 1"):
            owner_of("bitcoin", replicas)


@pytest.mark.parametrize(("hostname", "ordinal"), [
    ("coinpulse-collector-0", 0), ("coinpulse-collector-12", 12),
    ("my-release-coinpulse-3.coinpulse-headless.monitoring.svc.cluster.local", 3),
])
def test_replica_ordinal_from_statefulset_pod_names(hostname: str, ordinal: int) -> None:
    assert replica_ordinal(hostname) == ordinal


@pytest.mark.parametrize("hostname", ["collector", "coinpulse-collector-7f9c6d-xk2lp", "host-1a", ""])
def test_hostnames_without_an_ordinal_are_refused(hostname: str) -> None:
    with pytest.raises(ValueError, match="no ordinal suffix"):
        replica_ordinal(hostname)


# -- settings -----------------------------------------------------------------------------------------------


def test_one_replica_by_default() -> None:
    s = load_settings({})
    assert (s.replicas, s.replica_index) == (1, 0)


def test_replica_index_from_env_or_from_the_pod_name() -> None:
    s = load_settings({"COINPULSE_REPLICAS": "3", "COINPULSE_REPLICA_INDEX": "2", "HOSTNAME": "anything"})
    assert (s.replicas, s.replica_index) == (3, 2)
    s = load_settings({"COINPULSE_REPLICAS": "4", "HOSTNAME": "coinpulse-collector-3"})
    assert s.replica_index == 3
    s = load_settings({"COINPULSE_REPLICAS": "1", "HOSTNAME": "coinpulse-collector-3"})
    assert s.replica_index == 0  # alone: the hostname does not matter


@pytest.mark.parametrize(("env", "message"), [
    ({"COINPULSE_REPLICAS": "3", "COINPULSE_REPLICA_INDEX": "3"},
     "COINPULSE_REPLICA_INDEX: must be 0 … 2 with COINPULSE_REPLICAS=3 (got '3')"),
    ({"COINPULSE_REPLICAS": "2", "COINPULSE_REPLICA_INDEX": "-1"},
     "COINPULSE_REPLICA_INDEX: must be 0 … 1 with COINPULSE_REPLICAS=2 (got '-1')"),
    ({"COINPULSE_REPLICA_INDEX": "first"}, "COINPULSE_REPLICA_INDEX: must be an integer (got 'first')"),
    ({"COINPULSE_REPLICAS": "3", "HOSTNAME": "coinpulse-collector-5"},
     "COINPULSE_REPLICA_INDEX: must be 0 … 2 with COINPULSE_REPLICAS=3 (from the hostname 'coinpulse-collector-5')"),
    ({"COINPULSE_REPLICAS": "2", "HOSTNAME": "laptop"},
     "COINPULSE_REPLICA_INDEX: not set, and the hostname 'laptop' has no ordinal suffix like '-0' "
     "(StatefulSet pods are named <name>-<n>); set it to 0 … 1"),
    ({"COINPULSE_REPLICAS": "0"}, "COINPULSE_REPLICAS: Input should be greater than or equal to 1 (got '0')"),
])
def test_bad_replica_settings_say_what_to_do_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert str(err.value) == message


def _coinpulse_run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COINPULSE_", "COINCAP_"))}
    return subprocess.run([sys.executable, "-m", "collector.cli", "run"], env={**base, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_refuses_an_index_beyond_the_replicas_in_one_line() -> None:
    done = _coinpulse_run({"COINPULSE_REPLICAS": "3", "COINPULSE_REPLICA_INDEX": "5"})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "coinpulse run: error: COINPULSE_REPLICA_INDEX: must be 0 … 2 with COINPULSE_REPLICAS=3 (got '5')")


def test_the_demo_feed_is_not_split(db_url: str) -> None:
    """The synthetic market is one generator: several replicas would each invent every asset."""
    done = _coinpulse_run({"COINPULSE_REPLICAS": "2", "COINPULSE_REPLICA_INDEX": "0", "COINPULSE_FEED": "demo",
                           "COINPULSE_DATABASE_URL": db_url, "COINPULSE_METRICS_PORT": "0"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "coinpulse run: error: COINPULSE_REPLICAS: the demo feed runs in a single replica; "
        "set COINPULSE_REPLICAS=1, or COINCAP_API_KEY for a live feed")
