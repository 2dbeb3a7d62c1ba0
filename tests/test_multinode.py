"""A real two-node Ray cluster on this machine (Ray's own multi-node test utility): a sweep through --address runs
cells on both nodes, records each cell's nodes, and survives losing the worker node: its cell moves to the head
node and continues from its checkpoint, every epoch exactly once."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# An epoch of a smoke cell takes about a second, and the driver's record of epochs lags by a few (it is flushed
# every 2 s): with 10 epochs a cell seen at its first epochs still has several seconds to go when its node dies.
EPOCHS = 10
ENV = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "PYTHONUNBUFFERED": "1"}


def _records(sweep: Path, kind: str = "epochs") -> dict[str, list[dict]]:
    """The sweep's raw append-only record (records/KIND/*.jsonl), by cell."""
    rows: dict[str, list[dict]] = {}
    for chunk in sorted((sweep / "records" / kind).glob("*.jsonl")):
        for line in chunk.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row["config_hash"], []).append(row)
    return rows


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node of 1 CPU each: two one-worker cells fit only one per node. The head runs no
    dashboard, so Ray Train's own placement-group cleaner (which asks the dashboard) cannot help: the sweep's own
    release of a dead run's placement group must."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 96 * 2**20,
                                                           "include_dashboard": False})
    cluster.worker = cluster.add_node(num_cpus=1, object_store_memory=96 * 2**20)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def creator_class():
    """An actor that creates a placement group: what a Train controller is to its workers' group."""
    import ray
    from ray.util.placement_group import placement_group

    @ray.remote(num_cpus=0)
    class Creator:
        def create(self, cpus: float) -> str:
            pg = placement_group([{"CPU": cpus}])
            ray.get(pg.ready())
            return pg.id.hex()

    return Creator


OTHER_JOB = f"""
import sys, time, ray
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_multinode import creator_class
ray.init(address=sys.argv[1], log_to_driver=False)
creator = creator_class().remote()
print(ray.get(creator.create.remote(0.25)), flush=True)
ray.kill(creator)
time.sleep(120)  # the job lives on; its test kills it
"""


def test_placement_group_of_a_dead_creator_is_released(cluster):
    """What a Train controller lost with its node leaves: a placement group whose creating actor is dead. It is
    released; the driver's own placement groups (Tune's) are not, nor, on a shared cluster, another job's."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from sweep.tune import release_orphaned_placement_groups

    other = subprocess.Popen([sys.executable, "-c", OTHER_JOB, cluster.address], stdout=subprocess.PIPE, text=True,
                             env=ENV)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        others = other.stdout.readline().strip()  # another job's group, its creator killed
        assert others, "the other job did not create its placement group"
        creator = creator_class().remote()
        orphan = ray.get(creator.create.remote(0.5))
        drivers = placement_group([{"CPU": 0.5}])
        ray.get(drivers.ready())
        assert release_orphaned_placement_groups() == 0  # its creator lives
        ray.kill(creator)
        end = time.time() + 30
        while time.time() < end and not release_orphaned_placement_groups():
            time.sleep(0.2)
        table = ray.util.placement_group_table()
        assert table[orphan]["state"] == "REMOVED"
        assert table[drivers.id.hex()]["state"] == "CREATED"
        assert table[others]["state"] == "CREATED"  # not this job's
        remove_placement_group(drivers)
    finally:
        ray.shutdown()
        other.kill()
        other.wait()


def test_two_node_cluster_runs_cells_on_both_and_survives_losing_a_node(cluster, tmp_path):
    worker = cluster.worker
    proc = None
    try:
        cmd = [sys.executable, str(ROOT / "sweep" / "run_grid.py"), "--preset", "smoke", "--seeds", "1,2",
               "--set", "variant=records+mixup", "--set", "dataset=cifar10", "--set", f"epochs={EPOCHS}",
               "--data-root", "synthetic", "--address", cluster.address, "--storage", str(tmp_path), "--name", "mn",
               "--max-failures", "3"]
        log = open(tmp_path / "log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
        sweep = tmp_path / "mn"
        end = time.time() + 300
        # two cells of one method (two seeds) keep pace, so neither is done when the other has its first checkpoint
        while time.time() < end:  # both cells under way, one on each node, each with a checkpoint
            cells = _records(sweep) if (sweep / "records" / "epochs").is_dir() else {}
            if len(cells) == 2 and all(len(r) >= 1 for r in cells.values()):
                break
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            raise AssertionError("the two cells did not both start: " + (tmp_path / "log").read_text()[-3000:])
        nodes_before = {r["config_hash"]: r["node"] for rows in cells.values() for r in rows}
        assert len(set(nodes_before.values())) == 2, nodes_before  # one cell per node
        assert all(len(r) <= EPOCHS // 2 for r in cells.values()), cells  # both far from done
        cluster.remove_node(worker, allow_graceful=False)  # the worker node dies mid-sweep
        assert proc.wait(timeout=400) == 0, (tmp_path / "log").read_text()[-4000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()

    runs = pq.read_table(sweep / "runs.parquet").to_pandas()
    epochs = pq.read_table(sweep / "epochs.parquet").to_pandas()
    assert (runs["status"] == "finished").all(), runs[["label", "status", "error"]]
    for _, run in runs.iterrows():
        mine = epochs[epochs["config_hash"] == run["config_hash"]]
        assert sorted(mine["epoch"]) == list(range(EPOCHS))  # no epoch missing or doubled
    raw = _records(sweep)
    for h, rows in raw.items():  # nor in the raw record the Parquet is built from (one report per epoch)
        assert sorted(r["epoch"] for r in rows) == list(range(EPOCHS)), (h, rows)
    finishes = [e["config_hash"] for rows in _records(sweep, "events").values() for e in rows if e["event"] == "finish"]
    assert sorted(finishes) == sorted(runs["config_hash"])  # every cell finished exactly once
    nodes = {h: list(n) for h, n in zip(runs["config_hash"], runs["nodes"])}
    assert len({n for ns in nodes.values() for n in ns}) == 2  # cells ran on both nodes
    moved = [h for h, ns in nodes.items() if len(ns) == 2]
    assert len(moved) == 1, nodes  # the dead node's cell continued on the head node
    first_after = min(r["epoch"] for r in raw[moved[0]] if r["node"] == nodes[moved[0]][1])
    assert first_after > 0  # from its checkpoint, not from scratch
