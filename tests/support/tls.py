"""Throw-away TLS material made with ``openssl`` and a redis-server that speaks only TLS and requires client
certificates.

`make_tls_material(dir)` writes a CA, a server certificate for ``127.0.0.1`` / ``localhost`` and a client
certificate, all EC P-256, valid for two days. `TlsRedis` is a `LocalRedisServer` with ``--port 0`` (no plain
TCP) and a TLS port, started and polled for readiness over TLS with the client certificate. `TlsSentinelRedis`
adds a TLS-only Sentinel that names it.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from launch.redis_server import LocalRedisServer, free_port
from launch.redis_topologies import HOST, SentinelServer, client_for, start_process

DAYS = "2"


@dataclass(frozen=True)
class TlsMaterial:
    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_kwargs(self, *, with_client_cert: bool = True) -> dict[str, Any]:
        """redis-py options for a client that trusts the CA (and presents the client certificate)."""
        options: dict[str, Any] = {"ssl_ca_certs": str(self.ca_cert), "ssl_cert_reqs": "required"}
        if with_client_cert:
            options.update(ssl_certfile=str(self.client_cert), ssl_keyfile=str(self.client_key))
        return options


def _openssl(openssl: str, *args: str) -> None:
    done = subprocess.run(
        [openssl, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed ({done.returncode}): {done.stderr[-800:]}")


def _leaf(openssl: str, d: Path, name: str, cn: str, ca_cert: Path, ca_key: Path, extensions: str) -> None:
    key, csr, cert, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    _openssl(
        openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
    )  # fmt: skip
    ext.write_text(extensions)
    _openssl(
        openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", "0x" + secrets.token_hex(16), "-days", DAYS, "-sha256", "-extfile", str(ext),
        "-out", str(cert),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    key.chmod(0o600)


def make_tls_material(dir: Path) -> TlsMaterial:
    """A CA, a server cert (SAN IP:127.0.0.1, DNS:localhost) and a client cert signed by it, under `dir`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed: the TLS fixtures need it to make certificates")
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = d / "ca.key", d / "ca.crt"
    _openssl(
        openssl, "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca_cert), "-days", DAYS, "-sha256", "-subj", "/CN=md-cache test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    ca_key.chmod(0o600)
    common = (
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _leaf(
        openssl, d, "server", "localhost", ca_cert, ca_key,
        common + "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )  # fmt: skip
    _leaf(
        openssl,
        d,
        "client",
        "md-cache test client",
        ca_cert,
        ca_key,
        common + "extendedKeyUsage=clientAuth\n",
    )
    return TlsMaterial(
        dir=d,
        ca_cert=ca_cert,
        ca_key=ca_key,
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
    )


class TlsRedis(LocalRedisServer):
    """redis-server with TLS only (``--port 0``) on a free TLS port, client certificates required.

    `port` is the TLS port; the certificates live in `material` (under this server's own directory, removed by
    `cleanup()`). `start()` after `kill()` brings it back on the same port, like `LocalRedisServer`."""

    def __init__(self, tls_port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(port=tls_port or free_port(), extra_args=extra_args)
        self.log = self.dir / "redis.log"
        try:
            self.material = make_tls_material(self.dir / "tls")
        except BaseException:
            self.cleanup()
            raise

    @property
    def tls_port(self) -> int:
        return self.port

    @property
    def url(self) -> str:
        return f"rediss://{HOST}:{self.port}/0"

    def client_kwargs(self, *, with_client_cert: bool = True) -> dict[str, Any]:
        return self.material.client_kwargs(with_client_cert=with_client_cert)

    def client(self, *, with_client_cert: bool = True, **kwargs: Any) -> redis.Redis:
        """A client over TLS that verifies the server (hostname 127.0.0.1 included); no retries."""
        return client_for(
            self.port, ssl=True, **self.client_kwargs(with_client_cert=with_client_cert), **kwargs
        )

    def start(self, timeout: float = 10.0) -> None:
        m = self.material
        args = [
            self.binary, "--port", "0", "--tls-port", str(self.port), "--bind", HOST,
            "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.log),
            "--tls-cert-file", str(m.server_cert), "--tls-key-file", str(m.server_key),
            "--tls-ca-cert-file", str(m.ca_cert), "--tls-auth-clients", "yes", *self.extra_args,
        ]  # fmt: skip

        def ready() -> bool:
            with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.ping())

        self.process = start_process(args, self.log, ready, timeout, f"TLS redis-server on :{self.port}")

    @classmethod
    def launch(cls, tls_port: int | None = None, extra_args: tuple[str, ...] = ()) -> Self:
        """Make the certificates and start the server; on any failure leave nothing behind."""
        server = cls(tls_port, extra_args)
        try:
            server.start()
        except BaseException:
            server.cleanup()
            raise
        return server

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


class TlsSentinel(SentinelServer):
    """A Sentinel on TLS only (``port 0``, ``tls-port``), client certificates required, watching a TLS server
    as `service` over TLS (``tls-replication yes``: its own connections to the server present the server
    certificate, which may also authenticate a client)."""

    def __init__(self, service: str, master: TlsRedis) -> None:
        super().__init__(service, master.port)
        m = self.material = master.material
        plain = self.conf.read_text()
        self.conf.write_text(
            plain.replace(
                f"port {self.port}\n",
                "\n".join(
                    [
                        "port 0",
                        f"tls-port {self.port}",
                        f"tls-cert-file {m.server_cert}",
                        f"tls-key-file {m.server_key}",
                        f"tls-ca-cert-file {m.ca_cert}",
                        "tls-auth-clients yes",
                        "tls-replication yes",
                        "",
                    ]
                ),
                1,
            )
        )

    def client(self, **kwargs: Any) -> redis.Redis:
        return client_for(self.port, ssl=True, **self.material.client_kwargs(), **kwargs)

    def start(self, timeout: float = 10.0) -> None:
        def ready() -> bool:
            with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.ping())

        self.process = start_process(
            [self.binary, str(self.conf), "--sentinel"],
            self.log,
            ready,
            timeout,
            f"TLS sentinel on :{self.port}",
        )


class TlsSentinelRedis:
    """A TLS-only server and a TLS-only Sentinel naming it as `service`; `cleanup()` stops both (by PID)."""

    def __init__(self, service: str = "mymaster") -> None:
        self.service = service
        self.server = TlsRedis.launch()
        try:
            self.sentinel = TlsSentinel(service, self.server)
            self.sentinel.start()
            with self.sentinel.client() as client:
                deadline = time.monotonic() + 10
                while client.sentinel_get_master_addr_by_name(service) is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the TLS Sentinel names no master for {service}")
                    time.sleep(0.05)
        except BaseException:
            self.cleanup()
            raise

    @property
    def material(self) -> TlsMaterial:
        return self.server.material

    def cleanup(self) -> None:
        sentinel = getattr(self, "sentinel", None)
        if sentinel is not None:
            sentinel.cleanup()
        self.server.cleanup()
