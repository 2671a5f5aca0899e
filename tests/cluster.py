"""A three-node Ray cluster on one machine that shares no disk and no loopback between nodes.

The head runs in this machine's network namespace with an address on a bridge the harness
creates (10.213.X.1/24, X picked so no existing address is in the subnet). Each worker node
runs in its own network namespace, joined to the bridge by a veth pair (10.213.X.2, .3),
and in its own mount namespace with a private tmpfs over the test's local work folder: a
file the driver writes there is not on the node, and nothing a node writes there reaches
the driver. Worker nodes' TMPDIR points inside that tmpfs, so a stray temp file shows up
in `node_files()`. Every node is `ray start --block` under its own session (setsid),
stopped by killing its process group, never by `ray stop` (which stops every Ray on the
machine). The GCS emulator binds the bridge address, so every node reaches it.

Needs root (`ip netns`, `unshare -m`), as CI has.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.gcs import GcsEmulator

VENV_BIN = Path(sys.executable).parent
SUBNET_BASE = "10.213"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def can_build() -> str | None:
    """Why this machine cannot host the cluster, or None."""
    if os.geteuid() != 0:
        return "needs root for ip netns and unshare -m"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "needs iproute2 (ip) and util-linux (unshare)"
    return None


def _used_subnets() -> set[str]:
    out = _ip("-j", "addr").stdout
    nets = set()
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                nets.add(str(ipaddress.ip_network(f"{a['local']}/24", strict=False)))
    return nets


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    ip: str
    proc: subprocess.Popen
    temp: str
    netns: str | None = None
    log: Path | None = None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@dataclass
class Cluster:
    """Built by `cluster()`: addresses, the emulator, and a look into each node's disk."""

    subnet: str
    head_ip: str
    dashboard: str  # http://HEAD:PORT, for `loom submit --address`
    gcs_address: str  # HEAD:PORT, for ray.init(address=...)
    work: Path  # the test's local work folder (a private tmpfs on every worker node)
    gcs: GcsEmulator
    nodes: list[Node] = field(default_factory=list)

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if n.netns]

    def emulator_url(self) -> str:
        return self.gcs.host

    def node_files(self, node: Node) -> list[str]:
        """Every file under the work folder as `node` sees it (its own tmpfs)."""
        raylet = _child_in_netns(node)
        out = subprocess.run(["nsenter", "-t", str(raylet), "-m", "find", str(self.work),
                              "-type", "f"], capture_output=True, text=True, check=True)
        return sorted(out.stdout.split())

    def node_sees(self, node: Node, path: str) -> bool:
        raylet = _child_in_netns(node)
        return subprocess.run(["nsenter", "-t", str(raylet), "-m", "test", "-e", path]
                              ).returncode == 0


def _child_in_netns(node: Node) -> int:
    """The node's `ray start` process (inside both namespaces)."""
    for pid in _pgid_members(node.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ray" in cmd and b"start" in cmd:
            return pid
    raise RuntimeError(f"{node.name}: no ray start process in its group")


def _pgid_members(pgid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, ProcessLookupError):
                if os.getpgid(int(d)) == pgid:
                    out.append(int(d))
    return sorted(out)


def _pick_subnet() -> int:
    used = _used_subnets()
    existing = set(_ip("netns", "list").stdout.split())
    for x in random.sample(range(1, 255), 254):
        if f"{SUBNET_BASE}.{x}.0/24" not in used and f"loom{x}w1" not in existing:
            return x
    raise RuntimeError(f"no free {SUBNET_BASE}.X.0/24 subnet")


class _Net:
    """The bridge, two veth pairs and two network namespaces; removed on close."""

    def __init__(self, x: int, workers: int):
        self.x, self.bridge = x, f"lm{x}br"
        self.head_ip = f"{SUBNET_BASE}.{x}.1"
        self.netns = [f"loom{x}w{i + 1}" for i in range(workers)]
        self.ips = [f"{SUBNET_BASE}.{x}.{i + 2}" for i in range(workers)]
        self.inner = [f"lm{x}n{i + 1}" for i in range(workers)]  # the node's interface

    def up(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.head_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (ns, addr) in enumerate(zip(self.netns, self.ips, strict=True)):
            host, inner = f"lm{self.x}h{i + 1}", f"lm{self.x}n{i + 1}"
            _ip("netns", "add", ns)
            _ip("link", "add", host, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", host, "master", self.bridge)
            _ip("link", "set", host, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for i, ns in enumerate(self.netns):
            _ip("link", "del", f"lm{self.x}h{i + 1}", check=False)
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)


def _node_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "PYTHONPATH", "STORAGE_EMULATOR_HOST")}
    return env | {"PATH": f"{VENV_BIN}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
                  "RAY_USAGE_STATS_ENABLED": "0"} | extra


def _start_head(ray: list[str], ip: str, root: Path, cpus: int, store_mb: int,
                attempts: int = 3) -> tuple[Node, dict[str, int]]:
    """The head, retried like a worker (the same 30 s registration window applies)."""
    log = ""
    for attempt in range(attempts):
        ports = {k: _free_port(ip) for k in (
            "--port", "--dashboard-port", "--ray-client-server-port", "--node-manager-port",
            "--object-manager-port", "--metrics-export-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port")}
        temp = str(root / f"h{attempt}")
        os.makedirs(temp)
        head = _start("head", [
            *ray, "start", "--head", "--block", f"--node-ip-address={ip}",
            "--include-dashboard=true", f"--dashboard-host={ip}", f"--temp-dir={temp}",
            f"--num-cpus={cpus}", f"--object-store-memory={store_mb * 2**20}",
            "--disable-usage-stats", '--resources={"head": 1}',
            *[f"{k}={v}" for k, v in ports.items()]], _node_env({}), temp, ip)
        dashboard = f"http://{ip}:{ports['--dashboard-port']}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and head.proc.poll() is None:
            with contextlib.suppress(Exception):
                if ip in _alive_ips(dashboard):
                    return head, ports
            time.sleep(2)
        head.stop()
        for pid in _pids_under(temp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log = head.log.read_text(errors="replace")[-3000:] if head.log else ""
    raise RuntimeError(f"the head did not start after {attempts} attempts:\n{log}")


def _alive_ips(dashboard: str) -> set[str]:
    from ray.util.state import list_nodes

    return {n.node_ip for n in list_nodes(address=dashboard) if n.state == "ALIVE"}


def _start_worker(name: str, cmd: list[str], env: dict[str, str], temp: str, ip: str,
                  netns: str, dashboard: str, attempts: int = 3) -> Node:
    """One worker node, started and awaited alone: `ray start` gives a raylet 30 s to
    register (hard-coded), which a loaded machine can miss; then it exits and is retried."""
    for attempt in range(attempts):
        node = _start(name, cmd, env, temp, ip, netns)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and node.proc.poll() is None:
            with contextlib.suppress(Exception):  # the dashboard may be busy
                if ip in _alive_ips(dashboard):
                    return node
            time.sleep(2)
        node.stop()
        for pid in _pids_under(temp):  # a raylet that outlived its `ray start`
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log = node.log.read_text(errors="replace")[-3000:] if node.log else ""
        os.replace(node.log, f"{node.log}.{attempt}")
    raise RuntimeError(f"{name} did not join after {attempts} attempts:\n{log}")


def _start(name: str, cmd: list[str], env: dict[str, str], temp: str, ip: str,
           netns: str | None = None) -> Node:
    log = Path(temp, f"{name}.log")
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=temp)
    return Node(name, ip, proc, temp, netns, log)


@contextlib.contextmanager
def cluster(workers: int = 2, cpus_per_worker: int = 1, head_cpus: int = 0,
            object_store_mb: int = 150, bucket: str = "loom-cluster"):
    """Yields a Cluster: head (`head_cpus`, the dashboard) + `workers` nodes of
    `cpus_per_worker` CPUs, each with a custom resource `node<i>`; all torn down after."""
    why = can_build()
    if why:
        raise RuntimeError(why)
    previous = signal.signal(signal.SIGTERM, _raise_on_term)
    root = Path(tempfile.mkdtemp(prefix="lcl-", dir="/tmp"))  # short: Unix socket paths
    work = root / "work"
    work.mkdir()
    net = _Net(_pick_subnet(), workers)
    nodes: list[Node] = []
    gcs = GcsEmulator(bucket=bucket, host=net.head_ip)
    try:
        net.up()
        gcs.start()
        # This interpreter's Ray (and its loom): the venv may hold no `ray` script; the
        # wrapper waits longer for a node to register than `ray start`'s fixed 30 s
        ray = [sys.executable, str(Path(__file__).with_name("ray_node.py"))]
        head, ports = _start_head(ray, net.head_ip, root, head_cpus, object_store_mb)
        nodes.append(head)
        gcs_address = f"{net.head_ip}:{ports['--port']}"
        dashboard = f"http://{net.head_ip}:{ports['--dashboard-port']}"
        for i, (ns, addr) in enumerate(zip(net.netns, net.ips, strict=True)):
            temp = str(root / f"w{i + 1}")
            os.makedirs(temp)
            # The tmpfs is mounted inside the node's own mount namespace only: the host's
            # work folder stays as it is, and the node sees an empty one.
            start = (f"mount -t tmpfs -o size=256m loomnode {work} && mkdir -p {work}/tmp && "
                     f"exec {' '.join(ray)} start --block --address={gcs_address} "
                     f"--node-ip-address={addr} --num-cpus={cpus_per_worker} "
                     f"--object-store-memory={object_store_mb * 2**20} --temp-dir={temp} "
                     f"--disable-usage-stats --resources='{{\"node{i + 1}\": 1}}'")
            cmd = ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private",
                   "sh", "-c", start]
            # Every node has this machine's hostname, which resolves to loopback: gloo
            # (torch.distributed) would advertise 127.0.0.1 to its peers. A real node's
            # hostname resolves to its own address; here the node's interface is named.
            env = _node_env({"TMPDIR": f"{work}/tmp", "GLOO_SOCKET_IFNAME": net.inner[i]})
            nodes.append(_start_worker(f"node{i + 1}", cmd, env, temp, addr, ns, dashboard))
        yield Cluster(f"{SUBNET_BASE}.{net.x}.0/24", net.head_ip, dashboard, gcs_address,
                      work, gcs, nodes)
    finally:
        for n in reversed(nodes):
            n.stop()
        for n in nodes:  # anything that left the node's process group
            for pid in _pids_under(n.temp):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        gcs.stop()
        net.down()
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _raise_on_term(signum, frame):
    raise SystemExit(f"signal {signum}: tearing the cluster down")


def _pids_under(marker: str) -> list[int]:
    """Processes whose command line names this node's temp dir: ours, nobody else's."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    out.append(int(d))
    return out
