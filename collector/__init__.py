"""CoinPulse: CoinCap v3 market data into TimescaleDB, for Grafana dashboards and alerts."""

__version__ = "0.1.0"
