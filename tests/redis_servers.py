"""Real Redis servers on loopback for the shared cache tier: one server, a three-node Redis
Cluster, TLS. Each is started from a config file of mode 0600 (a password on the command
line would show in `ps`), on a free port, and ended by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from servers import free_port

PASSWORD = "s3cret-redis-pw-7f3a9c"


class RedisServer:
    def __init__(self, directory: Path, password: str | None = PASSWORD, policy: str = "allkeys-lru",
                 cluster: bool = False, tls: "TLSFiles | None" = None, port: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.policy = policy
        self.cluster = cluster
        self.tls = tls
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _config(self) -> Path:
        lines = [f"bind 127.0.0.1", "save \"\"", "appendonly no", f"dir {self.directory}",
                 "maxmemory 256mb", f"maxmemory-policy {self.policy}", "protected-mode no"]
        if self.tls:
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {self.tls.cert}",
                      f"tls-key-file {self.tls.key}", f"tls-ca-cert-file {self.tls.cert}", "tls-auth-clients no"]
        else:
            lines.append(f"port {self.port}")
        if self.password:
            lines.append(f"requirepass {self.password}")
        if self.cluster:
            # The bus port is given: the default (port + 10000) may be past 65535 or taken.
            lines += ["cluster-enabled yes", f"cluster-config-file {self.directory}/nodes-{self.port}.conf",
                      "cluster-node-timeout 2000", f"cluster-port {free_port()}"]
        path = self.directory / f"redis-{self.port}.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self) -> "RedisServer":
        conf = self._config()
        self.log = open(self.directory / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(["redis-server", str(conf)], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.directory / f'redis-{self.port}.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL by its PID: Redis dies mid-scroll."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()

    def client(self):
        import redis

        options = dict(password=self.password, socket_timeout=5)
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.cert))
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RedisCluster:
    """Three masters on loopback, made a cluster with `redis-cli --cluster create`."""

    def __init__(self, directory: Path, password: str | None = PASSWORD):
        self.nodes = [RedisServer(Path(directory) / f"n{i}", password, cluster=True) for i in range(3)]
        self.password = password

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> "RedisCluster":
        try:
            return self._start()
        except BaseException:
            self.stop()  # no server left behind by a cluster that did not come up
            raise

    def _start(self) -> "RedisCluster":
        for node in self.nodes:
            node.start()
        env = {**os.environ, "REDISCLI_AUTH": self.password or ""}
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, env=env,
                       timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [subprocess.run(["redis-cli", "-p", str(n.port), "cluster", "info"], capture_output=True,
                                     text=True, env=env).stdout for n in self.nodes]
            if all("cluster_state:ok" in s for s in states):
                return self
            time.sleep(0.2)
        raise RuntimeError("the cluster did not come up")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class TLSFiles:
    """A self-signed certificate for 127.0.0.1 (openssl), its key beside it."""

    def __init__(self, directory: Path):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = directory / "redis.crt", directory / "redis.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(self.key), "-out", str(self.cert)], check=True, capture_output=True)
        os.chmod(self.key, 0o600)


def password_file(directory: Path, password: str = PASSWORD) -> Path:
    path = Path(directory) / "redis.password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return path
