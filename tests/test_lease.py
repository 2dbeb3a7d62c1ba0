"""One run per sweep folder (lease.json with holder and heartbeat), and one grid per sweep name; no Ray needed."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from sweep import lease as lease_mod
from sweep.grids import PRESETS
from sweep.lease import LEASE_FILE, LeaseError, SweepLease
from sweep.results import GridMismatch, SweepStore, grid_difference, read_sweep_manifest, write_sweep_manifest
from sweep.run_grid import main as run_grid

SMOKE = ["--preset", "smoke", "--set", "variant=corr", "--set", "dataset=cifar10", "--data-root", "synthetic"]


@pytest.fixture(autouse=True)
def quick_claims(monkeypatch):
    monkeypatch.setattr(lease_mod, "CLAIM_SETTLE_S", 0.0)


def test_second_run_is_refused_naming_the_holder_and_release_frees_the_folder(tmp_path):
    store = SweepStore(str(tmp_path), "s")
    first = SweepLease(store, heartbeat_s=0.05)
    first.acquire()
    try:
        held = json.loads((tmp_path / "s" / LEASE_FILE).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        time.sleep(0.3)
        assert json.loads((tmp_path / "s" / LEASE_FILE).read_text())["heartbeat"] > held["heartbeat"]  # it beats
        with pytest.raises(LeaseError, match=f"in use by pid {os.getpid()} on host {socket.gethostname()}"):
            SweepLease(store).acquire()
    finally:
        first.release()
    assert not (tmp_path / "s" / LEASE_FILE).exists()
    again = SweepLease(store)
    again.acquire()
    again.release()


def _write_lease(store: SweepStore, **fields) -> None:
    now = time.time()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now, "heartbeat": now, "token": "x"}
    store.write_bytes(LEASE_FILE, json.dumps({**record, **fields}).encode())


def test_stale_leases_are_taken_over_with_a_notice(tmp_path, capsys):
    store = SweepStore(str(tmp_path), "s")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cases = [dict(pid=dead.pid, started_at=time.time() - 5),            # holder gone, same host
             dict(host="elsewhere", heartbeat=time.time() - 10 * 60)]   # another host, silent for 10 minutes
    for fields in cases:
        _write_lease(store, **fields)
        taker = SweepLease(store)
        taker.acquire()
        try:
            assert json.loads(store.read_bytes(LEASE_FILE))["token"] == taker.record["token"]
            assert "taking over the lease" in capsys.readouterr().err
        finally:
            taker.release()
    _write_lease(store, host="elsewhere")  # another host with a fresh heartbeat: alive
    with pytest.raises(LeaseError, match="host elsewhere"):
        SweepLease(store).acquire()


def test_run_grid_refuses_a_sweep_in_use_before_ray(tmp_path, capsys):
    holder = SweepLease(SweepStore(str(tmp_path), "busy"))
    holder.acquire()
    try:
        assert run_grid([*SMOKE, "--storage", str(tmp_path), "--name", "busy"]) == 2
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert err.startswith("error: sweep ") and f"pid {os.getpid()}" in err and err.count("\n") == 1


def test_a_different_grid_on_an_existing_name_is_refused_unless_extended(tmp_path, capsys):
    store = SweepStore(str(tmp_path), "g")
    two = PRESETS["smoke"].with_override("dataset", ("cifar10",)).with_override("variant", ("corr", "solar")).cells()
    write_sweep_manifest(store, two, {})
    assert grid_difference(read_sweep_manifest(store)["cells"], two) is None
    assert grid_difference(read_sweep_manifest(store)["cells"], two[:1]) is None  # a part of the sweep
    longer = [c.replace(epochs=5) for c in two]
    with pytest.raises(GridMismatch, match=r"epochs: saved 2; now 5.*--extend"):
        write_sweep_manifest(store, longer, {})
    assert len(read_sweep_manifest(store)["cells"]) == 2  # untouched
    assert len(write_sweep_manifest(store, longer, {}, extend=True)["cells"]) == 4

    # the same refusal through the CLI, before Ray, naming the field
    args = ["--storage", str(tmp_path), "--name", "g"]
    assert run_grid([*SMOKE, "--set", "epochs=7", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep ") and "epochs: saved 2, 5; now 7" in err and "--extend" in err


def test_resume_accepts_the_saved_grid_given_again_and_refuses_another(tmp_path, capsys):
    store = SweepStore(str(tmp_path), "r")
    cells = PRESETS["smoke"].with_override("variant", ("corr",)).with_override("dataset", ("cifar10",)).cells()
    write_sweep_manifest(store, cells, {"data_root": "synthetic"})
    args = ["--storage", str(tmp_path), "--name", "r", "--resume", "--dry-run"]
    assert run_grid([*SMOKE, *args]) == 0
    assert "1 cells" in capsys.readouterr().out
    assert run_grid([*SMOKE, "--set", "q=0.5", *args]) == 2
    err = capsys.readouterr().err
    assert "differs from the one saved" in err and "q: saved 0.3; now 0.5" in err
