"""Shared plumbing of the demo components: socket activation and one-line JSON exchanges."""

import json
import os
import signal
import socket
import sys

SD_LISTEN_FDS_START = 3


def listening_socket() -> socket.socket:
    """The socket systemd passed (LISTEN_FDS); the demo never creates its own listener.

    LISTEN_PID is not compared with our PID: under the bubblewrap wrapper (systemd < 257) the
    workload runs in a new PID namespace, so its PID differs from the one systemd started.
    Instead the inherited descriptor must be a listening unix stream socket.
    """
    if os.environ.get("LISTEN_FDS") != "1":
        raise SystemExit("expected exactly one socket from systemd socket activation")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or not listening:
        raise SystemExit("descriptor 3 is not a listening unix socket")
    return sock


def serve(handler) -> None:
    # Under PrivatePIDs= (systemd >= 257) the component is PID 1 of its namespace, and the
    # kernel drops a signal to a namespace's init that has no handler for it: without this,
    # `systemctl stop` waits TimeoutStopSec= (90 s) and then kills.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    server = listening_socket()
    while True:
        conn = server.accept()[0]
        with conn:
            try:
                request = json.loads(_read_line(conn))
                reply = handler(request)
            except (ValueError, KeyError, TypeError, OSError) as exc:  # keep serving
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            conn.sendall(json.dumps(reply, sort_keys=True).encode() + b"\n")


def ask(path: str, request: dict, timeout: float = 120) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(_read_line(sock))


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
