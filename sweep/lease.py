"""One sweep at a time per folder: STORAGE/NAME/lease.json names the holder and carries its heartbeat.

The lease is a whole file written through SweepStore (temporary name + move), so it works wherever the sweep's
records do: a local disk, NFS, or an object store. Object stores have no compare-and-swap, so the claim is written and
read back after a short pause; of two runs started seconds apart (the case seen: 6 s), the second finds a live lease
and stops. A lease is stale, and taken over with a notice, when its holder's process is gone (same host) or its
heartbeat is older than STALE_S (any host).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import psutil

from .results import SweepStore

LEASE_FILE = "lease.json"
HEARTBEAT_S = 10.0
STALE_S = 120.0
CLAIM_SETTLE_S = 0.5  # pause between writing a claim and reading it back (another run's claim wins if it lands)


class LeaseError(RuntimeError):
    """Another live run holds the sweep folder."""


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds")


def holder_alive(lease: dict, now: float) -> tuple[bool, str]:
    """(alive?, why): a lease from this host is alive while its process is (the same pid started no later than the
    lease, so a reused pid does not count); from another host, while its heartbeat is recent."""
    age = now - float(lease.get("heartbeat", 0))
    if age > STALE_S:
        return False, f"its last heartbeat is {age:.0f} s old (stale after {STALE_S:.0f} s)"
    if lease.get("host") == socket.gethostname():
        pid = int(lease.get("pid", -1))
        try:
            started = psutil.Process(pid).create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return False, f"its process {pid} is gone"
        if started > float(lease.get("started_at", 0)) + 1.0:
            return False, f"its process {pid} is gone (the pid now belongs to a younger process)"
    return True, f"heartbeat {age:.0f} s ago"


def describe_holder(lease: dict) -> str:
    return (f"pid {lease.get('pid')} on host {lease.get('host')}, started {_stamp(float(lease.get('started_at', 0)))}"
            f" UTC")


class SweepLease:
    """Hold STORAGE/NAME/lease.json for the life of a run: acquire(), then release() when done."""

    def __init__(self, store: SweepStore, heartbeat_s: float = HEARTBEAT_S):
        self.store = store
        self.heartbeat_s = heartbeat_s
        now = time.time()
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now, "heartbeat": now,
                       "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict | None:
        if not self.store.exists(LEASE_FILE):
            return None
        try:
            return json.loads(self.store.read_bytes(LEASE_FILE))
        except (OSError, ValueError):
            return None  # unreadable (torn by a foreign writer): treat as absent

    def _write(self) -> None:
        self.record["heartbeat"] = time.time()
        self.store.write_bytes(LEASE_FILE, json.dumps(self.record).encode())

    def acquire(self) -> None:
        current = self.read()
        if current is not None:
            alive, why = holder_alive(current, time.time())
            if alive:
                raise LeaseError(f"sweep {self.store.uri} is in use by {describe_holder(current)} ({why}); wait for "
                                 f"it to finish, stop it, or choose another --name. The lease is "
                                 f"{self.store.uri}/{LEASE_FILE}")
            print(f"note: taking over the lease of {self.store.uri} from {describe_holder(current)}: {why}",
                  file=sys.stderr, flush=True)
        self._write()
        time.sleep(CLAIM_SETTLE_S)
        winner = self.read()
        if winner is None or winner.get("token") != self.record["token"]:
            holder = describe_holder(winner) if winner else "another run"
            raise LeaseError(f"sweep {self.store.uri} was claimed at the same moment by {holder}; choose another "
                             "--name or try again when it is done")
        self._thread = threading.Thread(target=self._beat, name="sweep-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self.read()
                if current is not None and current.get("token") != self.record["token"]:
                    print(f"warning: the lease of {self.store.uri} was taken over by {describe_holder(current)}; "
                          "this run no longer holds it", file=sys.stderr, flush=True)
                    return
                self._write()
            except OSError as err:  # a storage hiccup: try again at the next beat
                print(f"warning: could not renew the lease of {self.store.uri}: {err}", file=sys.stderr, flush=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self.read()
            if current is not None and current.get("token") == self.record["token"]:
                self.store.fs.delete_file(self.store.path(LEASE_FILE))
        except OSError:
            pass  # a lease left behind goes stale and is taken over
