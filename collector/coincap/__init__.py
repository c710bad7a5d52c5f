"""The CoinCap v3 boundary: typed records, pure parsers, REST and WebSocket clients.

Nothing in this package touches the database or the writer.
"""
