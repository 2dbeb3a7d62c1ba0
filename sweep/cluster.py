"""Where a sweep runs: the embedded local Ray (loopback only, one retry), an existing cluster (`--address`, probed
before Ray is asked), and the storage every node must reach. Every failure here is one line naming the address or
path, raised as ClusterError before any cell starts."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import threading

import pyarrow as pa

from .results import SweepStore

PROBE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 30.0  # ray.init to something that accepts TCP but never answers as Ray (it retries for minutes)


class ClusterError(RuntimeError):
    """The cluster or the storage cannot be used; the message names the address or the path and the cause."""


# ---------------------------------------------------------------------------------------------------------------
# Storage


def check_storage(store: SweepStore) -> None:
    """Create the sweep folder and write, read and delete a probe file in it: a read-only mount, a path under
    /proc or a file where a folder should be fails here, in one line, before Ray starts."""
    probe = f".probe-{os.getpid()}"
    try:
        store.fs.create_dir(store.root, recursive=True)
        store.write_bytes(probe, b"ok")
        if store.read_bytes(probe) != b"ok":
            raise OSError("what was written did not read back")
        store.fs.delete_file(store.path(probe))
    except (OSError, pa.ArrowException) as err:
        raise ClusterError(f"--storage {store.uri}: cannot write the sweep there ({_cause(err)})") from None


def _cause(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return text.strip().splitlines()[0]


def check_shared_storage(store: SweepStore, nodes: list[dict]) -> None:
    """A cluster whose nodes are on several hosts needs storage they all reach: each cell's checkpoints are written
    on its worker's node and read by the driver (and by the node a cell moves to)."""
    hosts = sorted({n.get("NodeManagerAddress") or n.get("NodeManagerHostname") for n in nodes if n.get("Alive")})
    # an explicit file:// URI is the user's word that the path is shared (an NFS mount at the same path everywhere)
    if len(hosts) > 1 and store.is_local and not store.uri.startswith("file://"):
        raise ClusterError(
            f"--storage {store.uri} is a local path, but the cluster's nodes are on {len(hosts)} hosts "
            f"({', '.join(hosts)}): each node would write its cells' checkpoints to its own disk, where the driver "
            "and the other nodes cannot read them. Give storage every node reaches: a shared filesystem mounted at "
            "the same path on every node, named with file:// to confirm it is shared (NFS: --storage "
            "file:///mnt/shared/sweeps), or an object store (--storage s3://bucket/sweeps, "
            "gs://bucket/sweeps)")


# ---------------------------------------------------------------------------------------------------------------
# An existing cluster


def split_address(address: str) -> tuple[str, int] | None:
    """'host:port', '[v6]:port' or 'ray://host:port' -> (host, port); None for 'auto'/'local' (Ray resolves them)."""
    if address in ("auto", "local"):
        return None
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--address {address}: expected host:port (e.g. 10.0.0.5:6379), or 'auto'")
    return host.strip("[]"), int(port)


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse an address where nothing accepts connections, at once, instead of Ray's minutes of retries."""
    target = split_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        raise ClusterError(f"--address {address}: no Ray cluster there (connecting to {target[0]}:{target[1]}: "
                           f"{_cause(err)}); start one with `ray start --head --port={target[1]}`, or fix the "
                           "address") from None


@contextlib.contextmanager
def watchdog(seconds: float, message: str):
    """Exit the process with `message` if the block runs longer than `seconds`: ray.init to something that accepts
    TCP but never answers as Ray retries for many minutes and cannot be interrupted from Python."""
    def fire():
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def connect(address: str, **init_kwargs):
    import ray

    probe_address(address)
    with watchdog(CONNECT_TIMEOUT_S, f"--address {address}: the cluster did not answer within "
                                     f"{CONNECT_TIMEOUT_S:.0f} s; is it a Ray head (its GCS port, 6379 by default)?"):
        try:
            return ray.init(address=address, **init_kwargs)
        except ConnectionError as err:
            raise ClusterError(f"--address {address}: {_cause(err)}") from None


# ---------------------------------------------------------------------------------------------------------------
# The embedded local Ray

# Ray's switch for "this Ray is a single machine" (named for Windows/macOS, where it is the default): with it off,
# Ray takes 127.0.0.1 as the node's address, and the GCS, raylet, object manager, workers, dashboard agent and
# metrics exporters bind to loopback instead of every interface.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only():
    """While a local Ray starts: its processes inherit the switch; the driver, whose `ray` is already imported,
    reads the constant Ray derived from it at import, so that is switched too (and both restored after, so a later
    multi-node Ray in this process is not affected)."""
    from ray._private import ray_constants

    saved_env = os.environ.get(SINGLE_MACHINE_ENV)
    saved_const = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env
        if saved_const is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_const


def start_local(attempts: int = 2, **init_kwargs):
    """ray.init of a loopback-only local Ray; a start that fails (seen under heavy load: "node timed out during
    startup") is retried once, then reported in one line."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            with loopback_only():
                return ray.init(_node_ip_address="127.0.0.1", **init_kwargs)
        except Exception as err:  # Ray raises RuntimeError, TimeoutError, ConnectionError... for a failed start
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt == attempts:
                raise ClusterError(f"the local Ray did not start ({attempts} attempts): {_cause(err)}. If the machine "
                                   "is busy, try again; `ray stop` clears processes left by earlier runs") from None
            print(f"note: the local Ray did not start ({_cause(err)}); retrying once", file=sys.stderr, flush=True)


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback
