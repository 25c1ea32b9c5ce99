"""The fault proxy itself: the faults it injects must be ones a real network makes."""

from __future__ import annotations

import socket
import threading
import time

from tests.faultproxy import FaultProxy


def test_a_request_on_a_connection_dropped_while_delayed_never_reaches_the_server() -> None:
    """A stale CreateMultipartUpload forwarded after the client had given up, retried,
    completed and cleaned up would leave an upload nobody can abort: the flaky-network
    scenario once failed on exactly that. A real network drops such bytes."""
    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                received.append(conn.recv(1024))

    threading.Thread(target=serve, daemon=True).start()
    try:
        with FaultProxy(server.getsockname()) as proxy:
            proxy.set("delay", delay=0.5)
            with socket.create_connection((proxy.host, proxy.port)) as client:
                client.sendall(b"POST /bucket/key?uploads HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.1)
                proxy.drop_connections()
                time.sleep(0.8)  # past the delay: a forwarded request would be in by now
            proxy.set("pass")
            with socket.create_connection((proxy.host, proxy.port)) as client:
                client.sendall(b"GET /after HTTP/1.1\r\n\r\n")
                deadline = time.monotonic() + 5
                while not received and time.monotonic() < deadline:
                    time.sleep(0.02)
    finally:
        server.close()
    assert received == [b"GET /after HTTP/1.1\r\n\r\n"]
