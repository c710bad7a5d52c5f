"""A TCP proxy between the collector and the database, so a test can cut the link and restore it.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = proxy.url(db_url)    # the same database, through the proxy
        proxy.cut()                # every open connection is reset; new ones are accepted and reset at once
        proxy.hold()               # nothing is forwarded, nothing is refused: every round trip hangs
        proxy.restore()            # connections go through again

A cut looks to the client like a database that went away: established sessions fail on their next round
trip and new connections fail at once (no hang), as when the server or the network drops them. A hold
looks like a network that silently drops packets: the client waits (until its own timeouts, if any).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._cut = False
        self._flowing = threading.Event()  # cleared while held
        self._flowing.set()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self.accepted = 0  # connections accepted, ever
        self.refused = 0  # of which reset at once because the link was cut

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url(self, database_url: str) -> str:
        """``database_url`` pointed at the proxy instead of the database."""
        parts = urlsplit(database_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._listener.listen(64)
        thread = threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def close(self) -> None:
        self._closing = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._drop_all()
        for thread in list(self._threads):
            thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults --------------------------------------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection and every new one until ``restore()``."""
        with self._lock:
            self._cut = True
        self._drop_all()

    def hold(self) -> None:
        """Forward nothing, in either direction, and serve no new connection, until ``restore()``."""
        self._flowing.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False
        self._flowing.set()

    @property
    def is_cut(self) -> bool:
        with self._lock:
            return self._cut

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                cut = self._cut
                if cut:
                    self.refused += 1
            if cut:
                _reset(client)
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True, name="tcp-proxy-serve")
            thread.start()
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]

    def _serve(self, client: socket.socket) -> None:
        self._flowing.wait()  # held: the connection is accepted but nobody answers
        if self.is_cut or self._closing:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = (client, upstream)
        with self._lock:
            if self._cut:  # cut while we were connecting
                _reset(client)
                _reset(upstream)
                return
            self._pairs.add(pair)
        for src, dst in ((client, upstream), (upstream, client)):
            thread = threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True,
                                      name="tcp-proxy-pump")
            thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                self._flowing.wait()
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # what arrives while held is delivered only after restore()
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            known = pair in self._pairs
            self._pairs.discard(pair)
        if known:  # an orderly end from one side: end the other side too
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
