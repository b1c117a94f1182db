"""Servers that the test suite and the benchmarks start for themselves.

A Redis Cluster (3 masters, 3 replicas), a Redis Sentinel set (a master, a replica, three
sentinels) and PgBouncer (one instance in transaction pooling, one in session pooling) in
front of the shared PostgreSQL. Each runs on spare loopback ports, in a temporary directory
of its own, and is stopped by its pid (never by a name). The shared servers (PostgreSQL
5432, MariaDB 3306, Redis 6379) are only ever read.

Plain Python and redis-py, no pytest: ``benchmarks`` uses this module too. The ports are
chosen once per run by the first process that asks (:func:`topology_ports`) and handed to
child processes (contention workers, benchmark contenders) in the environment, so that
the Django settings of every process name the same servers.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from tests.support.polling import wait_until

#: The environment variable that carries the chosen ports to child processes.
PORTS_VARIABLE = "DJANGO_LOCKS_TOPOLOGY_PORTS"
#: The Sentinel service name of the suite's own master.
SENTINEL_SERVICE = "django_locks_topo"
#: How long a node may be unreachable before the cluster (or the sentinels) fail it over.
NODE_TIMEOUT_MS = 1000

_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A server of the harness did not start or did not reach the expected state."""


def topology_ports() -> dict[str, list[int]]:
    """The ports of this run's own servers: chosen by the first process that asks, then
    read from the environment by every child process."""
    raw = os.environ.get(PORTS_VARIABLE)
    if raw:
        return json.loads(raw)
    sizes = {"cluster": 6, "cluster_bus": 6, "sentinel_redis": 2, "sentinels": 3, "pgbouncer": 2}
    sockets: list[socket.socket] = []
    try:  # all bound at once: no port is chosen twice
        for _ in range(sum(sizes.values())):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        numbers = [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
    ports: dict[str, list[int]] = {}
    for name, size in sizes.items():
        ports[name], numbers = numbers[:size], numbers[size:]
    os.environ[PORTS_VARIABLE] = json.dumps(ports)
    return ports


def cluster_urls(ports: dict[str, list[int]]) -> list[str]:
    """Startup node URLs of the cluster (its three first nodes start as masters)."""
    return [f"redis://127.0.0.1:{port}/0" for port in ports["cluster"][:3]]


def sentinel_addresses(ports: dict[str, list[int]]) -> list[tuple[str, int]]:
    return [("127.0.0.1", port) for port in ports["sentinels"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepting(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True


# ----------------------------------------------------------------------------- processes


class Process:
    """One server process, killed with its parent (PR_SET_PDEATHSIG) if the run dies."""

    def __init__(self, name: str, argv: list[str], cwd: Path, run_as: str | None = None) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.log_path = cwd / f"{name}.log"
        self.run_as = run_as
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        uid = gid = None
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            uid, gid = entry.pw_uid, entry.pw_gid

        def in_child() -> None:
            if gid is not None and uid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            # After the uid change (which clears it), so that it stays set across exec.
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=in_child,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, then reap: a crash."""
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGCONT)  # a paused process dies too
                self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise ServerError(f"{name} is not installed (scripts/setup-venv installs it on Debian)")
    return path


class RedisServer:
    """A redis-server without persistence on a spare port (6379 is never touched): a test's
    own (the ``redis_server`` fixture), or a node of the cluster or the Sentinel set below.
    ``options``: more redis-server options ("--requirepass", "s3cret")."""

    def __init__(self, directory: Path, *options: str, port: int | None = None,
                 bus_port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.bus_port = bus_port
        self.directory = directory
        self.options = options
        directory.mkdir(parents=True, exist_ok=True)
        argv = [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(directory),
                "--repl-diskless-sync-delay", "0"]
        if bus_port is not None:
            argv += ["--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                     "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        self._process = Process(f"redis-{self.port}", [*argv, *options], directory)

    @property
    def process(self) -> subprocess.Popen | None:
        """The redis-server process, None when stopped."""
        return self._process.process

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1, **kwargs)

    def answers(self) -> bool:
        """It answers a PING (a refusal for want of a password is an answer too)."""
        try:
            with self.client() as client:
                return client.ping()
        except redis.AuthenticationError:
            return True

    def start(self) -> None:
        self._process.start()
        try:
            wait_until(self.answers, 10, 0.02, error=ServerError, retry_on=(Exception,),
                       what=f"redis-server on {self.port}")
        except ServerError as e:
            raise ServerError(f"{e}\n{self._process.log_tail()}") from e

    def kill(self) -> None:
        self._process.kill()

    def stop(self) -> None:
        """The same as :meth:`kill`: there is nothing to save."""
        self._process.kill()

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return client.info(section)


# ----------------------------------------------------------------------------- Redis Cluster


class RedisClusterServers:
    """Six cluster nodes: the first three start as masters, each with one replica."""

    def __init__(self, ports: dict[str, list[int]], directory: Path) -> None:
        self.nodes = [RedisServer(directory / f"node-{port}", port=port, bus_port=bus)
                      for port, bus in zip(ports["cluster"], ports["cluster_bus"], strict=True)]
        self.urls = cluster_urls(ports)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        result = subprocess.run(
            [_binary("redis-cli"), "--cluster", "create", *(n.address for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise ServerError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
        self.wait_healthy()

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    def masters(self) -> list[RedisServer]:
        """The masters serving slots, as a live node sees them (CLUSTER SLOTS)."""
        for node in self.running():
            try:
                with node.client() as client:
                    ranges = client.execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            return [self.node(port) for port in sorted({int(r[2][1]) for r in ranges})]
        raise ServerError("no cluster node answers")

    def master_of_slot(self, slot: int) -> RedisServer:
        with self.running()[0].client() as client:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.node(int(master[1]))
        raise ServerError(f"slot {slot} is not served")

    def keyslot(self, name: bytes | str) -> int:
        with self.running()[0].client() as client:
            return int(client.execute_command("CLUSTER KEYSLOT", name))

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every running node sees the cluster ok, every slot has a master, every master a
        replica in sync."""

        def healthy() -> bool:
            for node in self.running():
                with node.client() as client:
                    if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                        return False
                info = node.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            masters = self.masters()
            return len(masters) == 3 and all(
                m.running and any(isinstance(v, dict) and v.get("state") == "online"
                                          for k, v in m.info("replication").items()
                                          if k.startswith("slave"))
                for m in masters)

        wait_until(healthy, timeout, 0.1, error=ServerError, retry_on=(Exception,),
                   what="Redis Cluster healthy (3 masters, each with a replica in sync)")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


# ----------------------------------------------------------------------------- Redis Sentinel


class SentinelServers:
    """A master, one replica, and three sentinels watching them (quorum 2)."""

    def __init__(self, ports: dict[str, list[int]], directory: Path) -> None:
        master_port, replica_port = ports["sentinel_redis"]
        self.directory = directory
        self.redis_nodes = [
            RedisServer(directory / f"redis-{master_port}", port=master_port),
            RedisServer(directory / f"redis-{replica_port}", "--replicaof", "127.0.0.1", str(master_port),
                        port=replica_port),
        ]
        self.sentinel_ports = ports["sentinels"]
        self.sentinels: list[Process] = []
        # Each sentinel is told its id and the others' (as sentinels write into their own
        # configuration once they have met): no wait for them to discover each other.
        ids = {port: hashlib.sha1(f"sentinel-{port}".encode()).hexdigest() for port in self.sentinel_ports}
        for port in self.sentinel_ports:
            conf = directory / f"sentinel-{port}" / "sentinel.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            s = SENTINEL_SERVICE
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {conf.parent}\nsentinel myid {ids[port]}\n"
                f"sentinel monitor {s} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {s} {NODE_TIMEOUT_MS}\n"
                # Also how long after a failover the sentinels that took part wait before
                # another one (twice this): what a double failover waits for.
                f"sentinel failover-timeout {s} {2 * NODE_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {s} 1\n"
                f"sentinel known-replica {s} 127.0.0.1 {replica_port}\n"
                + "".join(f"sentinel known-sentinel {s} 127.0.0.1 {other} {ids[other]}\n"
                          for other in self.sentinel_ports if other != port)
            )
            self.sentinels.append(Process(f"sentinel-{port}",
                                          [_binary("redis-server"), str(conf), "--sentinel"],
                                          conf.parent))

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.redis_nodes if n.port == port)

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[index], socket_timeout=2, socket_connect_timeout=1)

    def master_port(self) -> int:
        """The master's port, as a majority of the running sentinels see it."""
        seen: list[int] = []
        for index, process in enumerate(self.sentinels):
            if process.running:
                with self.sentinel_client(index) as client:
                    address = client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
                if address:
                    seen.append(int(address[1]))
        if not seen:
            raise ServerError("no sentinel answers")
        return max(set(seen), key=seen.count)

    def master(self) -> RedisServer:
        return self.node(self.master_port())

    def replicas_in_sync(self, master: RedisServer) -> bool:
        info = master.info("replication")
        return info.get("role") == "master" and any(
            isinstance(v, dict) and v.get("state") == "online"
            for k, v in info.items() if k.startswith("slave"))

    def start(self) -> None:
        for node in self.redis_nodes:
            node.start()
        for process in self.sentinels:
            process.start()
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every sentinel agrees on a master that has a replica in sync, and knows the
        other sentinels and the replica."""

        def healthy() -> bool:
            ports = set()
            for index in range(len(self.sentinels)):
                with self.sentinel_client(index) as client:
                    state = client.sentinel_master(SENTINEL_SERVICE)
                    if state.get("num-other-sentinels", 0) < 2 or state.get("num-slaves", 0) < 1:
                        return False
                    if state.get("flags") != "master":  # not s_down / o_down / failover
                        return False
                    ports.add(int(state["port"]))
            if len(ports) != 1:
                return False
            return self.replicas_in_sync(self.node(ports.pop()))

        wait_until(healthy, timeout, 0.1, error=ServerError, retry_on=(Exception,),
                   what="Sentinel set healthy (one master, replica in sync)")

    def stop(self) -> None:
        for process in self.sentinels:
            process.kill()
        for node in self.redis_nodes:
            node.kill()


# ----------------------------------------------------------------------------- PgBouncer


class PgBouncer:
    """PgBouncer in one pool mode in front of PostgreSQL, every database passed through
    (``* =``), trust authentication (the test server trusts loopback)."""

    def __init__(self, port: int, pool_mode: str, directory: Path, *, pool_size: int,
                 postgres_host: str = "127.0.0.1", postgres_port: int = 5432,
                 user: str = "postgres", query_wait_timeout: int = 60) -> None:
        self.port = port
        self.pool_mode = pool_mode
        self.directory = directory
        self.user = user
        directory.mkdir(parents=True, exist_ok=True)
        # PgBouncer refuses to run as root: then it runs as nobody, which must read this.
        run_as = "nobody" if os.geteuid() == 0 else None
        (directory / "userlist.txt").write_text(f'"{user}" ""\n')
        (directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={postgres_host} port={postgres_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {directory / 'userlist.txt'}\n"
            f"admin_users = {user}\nstats_users = {user}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
            f"max_client_conn = 200\nquery_wait_timeout = {query_wait_timeout}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        for path in (directory, directory / "userlist.txt", directory / "pgbouncer.ini"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.process = Process(f"pgbouncer-{port}",
                               [_binary("pgbouncer"), str(directory / "pgbouncer.ini")],
                               directory, run_as=run_as)

    def start(self) -> None:
        self.process.start()
        try:
            wait_until(lambda: _accepting(self.port), 10, 0.02, error=ServerError,
                       retry_on=(Exception,), what=f"pgbouncer on {self.port}")
        except ServerError as e:
            raise ServerError(f"{e}\n{self.process.log_tail()}") from e

    def admin(self, command: str) -> list[dict[str, Any]]:
        """A SHOW command on PgBouncer's admin console, as dicts."""
        import psycopg  # here: the psycopg2 runs of the suite (tests/settings.py) import no psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="pgbouncer",
                             autocommit=True, prepare_threshold=None) as connection:
            cursor = connection.cursor()
            cursor.execute(command)
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def stop(self) -> None:
        self.process.kill()


# ----------------------------------------------------------------------------- all of them


class Topology:
    """Everything above, started on :func:`topology_ports` (each part only on demand).
    A part that fails to start is stopped again and its error raised to whoever waits
    for it; :meth:`stop` stops whatever did start."""

    def __init__(self, postgres_host: str = "127.0.0.1", postgres_port: int = 5432,
                 postgres_user: str = "postgres") -> None:
        self.ports = topology_ports()
        self.directory = Path(tempfile.mkdtemp(prefix="django-locks-topology-"))
        self.directory.chmod(0o755)
        self.postgres = (postgres_host, postgres_port, postgres_user)
        self.cluster: RedisClusterServers | None = None
        self.sentinel: SentinelServers | None = None
        self.pgbouncers: dict[str, PgBouncer] = {}
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="topology")
        self._starting: dict[str, Future] = {}

    def prestart(self, *, cluster: bool = False, sentinel: bool = False) -> None:
        """Start these in the background now (at once, in threads); :meth:`start_cluster`
        and :meth:`start_sentinel` then wait for them."""
        if cluster and "cluster" not in self._starting:
            self._starting["cluster"] = self._executor.submit(self._start_cluster)
        if sentinel and "sentinel" not in self._starting:
            self._starting["sentinel"] = self._executor.submit(self._start_sentinel)

    def start_cluster(self) -> RedisClusterServers:
        self.prestart(cluster=True)
        return self._starting["cluster"].result()

    def start_sentinel(self) -> SentinelServers:
        self.prestart(sentinel=True)
        return self._starting["sentinel"].result()

    def _start_cluster(self) -> RedisClusterServers:
        self.cluster = RedisClusterServers(self.ports, self.directory / "cluster")
        self.cluster.start()
        return self.cluster

    def _start_sentinel(self) -> SentinelServers:
        self.sentinel = SentinelServers(self.ports, self.directory / "sentinel")
        self.sentinel.start()
        return self.sentinel

    def start_pgbouncer(self, pool_mode: str, pool_size: int | None = None) -> PgBouncer:
        """``transaction`` (pool of 1 server connection: every client shares it, so a leak
        of session state would show) or ``session`` (pool of 4; a client waits at most
        2 s for a server connection); ``pool_size`` overrides the size."""
        if pool_mode not in self.pgbouncers:
            index, size = {"transaction": (0, 1), "session": (1, 4)}[pool_mode]
            size = pool_size or size
            host, port, user = self.postgres
            bouncer = PgBouncer(self.ports["pgbouncer"][index], pool_mode,
                                self.directory / f"pgbouncer-{pool_mode}", pool_size=size,
                                postgres_host=host, postgres_port=port, user=user,
                                query_wait_timeout=30 if pool_mode == "transaction" else 2)
            try:
                bouncer.start()
            except BaseException:
                bouncer.stop()
                raise
            self.pgbouncers[pool_mode] = bouncer
        return self.pgbouncers[pool_mode]

    def stop(self) -> None:
        """Stop everything started (waiting for background starts to end first)."""
        self._executor.shutdown(wait=True)
        for bouncer in self.pgbouncers.values():
            bouncer.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.sentinel is not None:
            self.sentinel.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
