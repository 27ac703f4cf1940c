"""The three ports `deploymtl serve` listens on, checked and probed before anything starts.

tritonserver gives up on a taken port and exits, but a readiness poll on a taken HTTP port may reach whatever
listens there (another Triton answers "ready"). So each port is bound once here, with SO_REUSEADDR (a port in
TIME_WAIT, left by recent clients, is free for tritonserver too): EADDRINUSE becomes a one-line error naming the
port and the option to change. A host that is not an address of this machine is reported the same way. A start
can still race with another process after the probe; the server's log is the backstop (server.py).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from ..errors import DeploymtlError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Ports:
    host: str = LOOPBACK
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def named(self) -> dict[str, int]:
        return {"http": self.http, "grpc": self.grpc, "metrics": self.metrics}

    @property
    def client_host(self) -> str:
        """Where a local client connects: the host, or loopback when serving on every interface."""
        return LOOPBACK if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)

    def urls(self) -> dict[str, str]:
        h = self.client_host
        return {"http": f"http://{h}:{self.http}", "grpc": f"{h}:{self.grpc}",
                "metrics": f"http://{h}:{self.metrics}/metrics"}


def port_in_use(host: str, port: int) -> bool:
    """True when binding (host, port) fails with EADDRINUSE; DeploymtlError when host is not local."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise DeploymtlError(f"--host {host} is not an address of this machine ({exc.strerror})",
                                     hint="expected 127.0.0.1 (default), 0.0.0.0 (every interface) or a local "
                                          "address") from None
            raise DeploymtlError(f"cannot bind {host}:{port} ({exc.strerror})",
                                 hint="pick another port or host") from None
        except socket.gaierror as exc:
            raise DeploymtlError(f"--host {host} cannot be resolved ({exc.strerror})",
                                 hint="expected an IP address such as 127.0.0.1") from None
    return False


def check_ports(ports: Ports) -> Ports:
    """Ranges, distinctness, then a probe of each; a one-line DeploymtlError for the first problem."""
    named = ports.named()
    for name, port in named.items():
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise DeploymtlError(f"--{name}-port {port!r}", hint="expected a port number 1..65535")
    if len(set(named.values())) != len(named):
        raise DeploymtlError(f"ports must differ: http {ports.http}, grpc {ports.grpc}, metrics {ports.metrics}",
                             hint="give each of --http-port, --grpc-port, --metrics-port its own port")
    for name, port in named.items():
        if port_in_use(ports.host, port):
            raise DeploymtlError(f"port {port} ({name}) on {ports.host} is already in use",
                                 hint=f"stop what listens there or pick another with --{name}-port")
    return ports


def free_ports(host: str = LOOPBACK) -> Ports:
    """Three distinct ports the kernel reports free on `host` right now (for tests and benchmarks)."""
    socks = [socket.socket() for _ in range(3)]
    try:
        for s in socks:
            s.bind((host, 0))
        http, grpc, metrics = (s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()
    return Ports(host, http, grpc, metrics)
