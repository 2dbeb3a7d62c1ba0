"""Where a sweep runs, without a real cluster: --address probed and bounded, storage checked, the shared-storage
rule for multi-host clusters, the local Ray's retry and its loopback switch."""

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import sweep.cluster as cluster
from sweep.cluster import ClusterError, check_shared_storage, check_storage, probe_address, split_address
from sweep.results import SweepStore
from sweep.run_grid import main as run_grid

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--set", "variant=corr", "--set", "dataset=cifar10", "--data-root", "synthetic"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_with_nothing_listening_fails_at_once_naming_it(tmp_path, capsys):
    address = f"127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    assert run_grid([*SMOKE, "--storage", str(tmp_path), "--address", address]) == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert err.startswith(f"error: --address {address}: no Ray cluster there") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(ClusterError, match="expected host:port"):
        split_address("headnode")
    assert split_address("ray://[::1]:10001") == ("::1", 10001) and split_address("auto") is None


def test_address_that_never_answers_as_ray_is_cut_off(tmp_path):
    """Something accepts TCP there but is not a Ray head: ray.init would retry for minutes; the watchdog ends it."""
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as listener:
        listener.bind(("::" if socket.has_ipv6 else "0.0.0.0", 0))  # every interface: Ray dials the LAN address
        listener.listen()
        port = listener.getsockname()[1]
        code = ("import sweep.cluster as c; c.CONNECT_TIMEOUT_S = 2; "
                f"c.connect('127.0.0.1:{port}', log_to_driver=False)")
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and time.monotonic() - t0 < 60
    assert f"error: --address 127.0.0.1:{port}: the cluster did not answer within 2 s" in out.stderr


@pytest.mark.parametrize("where", ["proc", "file", "under-file"])
def test_unusable_storage_is_one_line_before_ray(tmp_path, capsys, where):
    (tmp_path / "afile").write_text("x")
    storage = {"proc": "/proc/records-sweeps", "file": str(tmp_path / "afile"),
               "under-file": str(tmp_path / "afile" / "deeper")}[where]
    assert run_grid([*SMOKE, "--storage", storage, "--name", "s"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --storage {storage}/s: cannot write the sweep there (") and err.count("\n") == 1


def test_read_only_storage_names_the_cause(tmp_path, monkeypatch):
    store = SweepStore(str(tmp_path), "s")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(store, "write_bytes", read_only)
    with pytest.raises(ClusterError, match=f"--storage {tmp_path}/s: cannot write the sweep there "
                                           r"\(Read-only file system\)"):
        check_storage(store)


def _node(ip: str) -> dict:
    return {"Alive": True, "NodeManagerAddress": ip, "Resources": {"CPU": 1.0}}


def test_multi_host_cluster_needs_shared_storage(tmp_path):
    local = SweepStore(str(tmp_path), "s")
    check_shared_storage(local, [_node("10.0.0.1"), _node("10.0.0.1")])  # two nodes, one host: fine
    check_shared_storage(local, [_node("10.0.0.1"), {**_node("10.0.0.2"), "Alive": False}])  # the dead one is gone
    with pytest.raises(ClusterError, match=r"local path, but the cluster's nodes are on 2 hosts \(10.0.0.1, "
                                           r"10.0.0.2\).*NFS.*s3://.*gs://"):
        check_shared_storage(local, [_node("10.0.0.1"), _node("10.0.0.2")])
    shared = SweepStore("file://" + str(tmp_path), "s")  # the user's word that the path is shared
    check_shared_storage(shared, [_node("10.0.0.1"), _node("10.0.0.2")])
    bucket = SimpleNamespace(is_local=False, uri="s3://bucket/s")
    check_shared_storage(bucket, [_node("10.0.0.1"), _node("10.0.0.2")])


def test_local_ray_start_is_retried_once_then_reported(monkeypatch, capsys):
    import ray
    from ray._private import ray_constants

    calls = []

    def flaky_init(**kwargs):
        calls.append((kwargs, os.environ.get(cluster.SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER))
        if len(calls) == 1:
            raise RuntimeError("node timed out during startup")
        return "ctx"

    monkeypatch.setattr(ray, "init", flaky_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    assert cluster.start_local(num_cpus=1) == "ctx"
    assert "retrying once" in capsys.readouterr().err
    assert all(kw["_node_ip_address"] == "127.0.0.1" and env == "0" and const is False for kw, env, const in calls)
    assert cluster.SINGLE_MACHINE_ENV not in os.environ and ray_constants.ENABLE_RAY_CLUSTER  # restored

    def broken_init(**kwargs):
        raise RuntimeError("node timed out during startup")

    monkeypatch.setattr(ray, "init", broken_init)
    with pytest.raises(ClusterError, match=r"did not start \(2 attempts\): node timed out during startup"):
        cluster.start_local(num_cpus=1)


def test_probe_accepts_a_listening_address():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        probe_address(f"127.0.0.1:{listener.getsockname()[1]}")
