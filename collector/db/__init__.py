"""The database side: connections, the migration runner, rollup refresh. Knows nothing of CoinCap."""
