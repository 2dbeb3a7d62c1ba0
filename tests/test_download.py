"""CIFAR downloads against tiny fake archives served from 127.0.0.1: the fetch, the MD5 refusal, the lock, the
mirror as a folder, and run_grid's first-run download and its one-line refusal without network."""

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cifar_files import write_cifar10_pickles

import trainables.data.download as download
from trainables.data.sources import load_split

RUN_GRID = str(Path(__file__).resolve().parents[1] / "sweep" / "run_grid.py")


@pytest.fixture
def fake_archive(tmp_path, monkeypatch):
    """A tiny cifar-10-python.tar.gz in torchvision's layout; ARCHIVES expects its MD5. Returns (folder, written)."""
    staging, served = tmp_path / "staging", tmp_path / "served"
    written = write_cifar10_pickles(staging, seed=3)
    served.mkdir()
    archive = download.ARCHIVES["cifar10"]
    with tarfile.open(served / archive.filename, "w:gz") as tar:
        tar.add(staging / archive.folder, arcname=archive.folder)
    md5 = hashlib.md5((served / archive.filename).read_bytes()).hexdigest()
    monkeypatch.setitem(download.ARCHIVES, "cifar10", replace(archive, md5=md5))
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    return served, written


@pytest.fixture
def server(fake_archive):
    """Serves the fake archive's folder; `.gets` counts the requests, `.delay_s` slows each response."""
    served, _ = fake_archive

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            httpd.gets += 1
            time.sleep(httpd.delay_s)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    httpd.gets, httpd.delay_s = 0, 0.0
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_from_a_mirror_unpacks_torchvision_layout(fake_archive, server, tmp_path):
    _, written = fake_archive
    root = tmp_path / "data"
    folder = download.download_cifar("cifar10", root, mirror=server.url, progress=False)
    assert folder == root.resolve() / "cifar-10-batches-py" and download.is_present("cifar10", root)
    loaded = load_split("cifar10", "test", root)
    np.testing.assert_array_equal(loaded.images, written["test"].images)
    np.testing.assert_array_equal(loaded.labels, written["test"].labels)
    # nothing but the dataset and the lock file is left in the root (no archive, no temporary folder)
    assert sorted(p.name for p in root.iterdir()) == sorted([download.LOCK_NAME, "cifar-10-batches-py"])
    download.download_cifar("cifar10", root, mirror=server.url, progress=False)
    assert server.gets == 1, "a dataset already there is not fetched again"


def test_corrupt_archive_is_refused_and_removed(fake_archive, server, tmp_path, monkeypatch):
    archive = download.ARCHIVES["cifar10"]
    monkeypatch.setitem(download.ARCHIVES, "cifar10", replace(archive, md5="0" * 32))
    root = tmp_path / "data"
    with pytest.raises(download.DownloadError, match=f"MD5 {archive.md5} does not match torchvision's 0{{32}}"):
        download.download_cifar("cifar10", root, mirror=server.url, progress=False)
    assert [p.name for p in root.iterdir()] == [download.LOCK_NAME]


def test_concurrent_downloads_fetch_once(server, tmp_path):
    server.delay_s = 0.5  # the second caller arrives while the first one still holds the lock
    root = tmp_path / "data"
    results, errors = [], []

    def fetch():
        try:
            results.append(download.download_cifar("cifar10", root, mirror=server.url, progress=False))
        except Exception as err:  # surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert server.gets == 1


def test_mirror_can_be_a_folder(fake_archive, tmp_path, monkeypatch):
    served, written = fake_archive
    monkeypatch.setenv(download.MIRROR_ENV, str(served))
    download.download_cifar("cifar10", tmp_path / "data", progress=False)
    np.testing.assert_array_equal(load_split("cifar10", "train", tmp_path / "data").labels, written["train"].labels)


def test_run_grid_first_run_downloads_into_dot_data(server, tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(RUN_GRID).parent.parent))
    from sweep import run_grid

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECORDS_DATA_ROOT", raising=False)
    assert run_grid.main(["--preset", "quick", "--download-only", "--data-mirror", server.url]) == 0
    assert download.is_present("cifar10", tmp_path / "data") and server.gets == 1


def test_run_grid_without_network_says_what_it_tried_in_one_line(tmp_path):
    # A closed port on 127.0.0.1 stands in for a machine without network.
    env = {**os.environ, "RECORDS_DATA_MIRROR": "http://127.0.0.1:9/cifar"}
    env.pop("RECORDS_DATA_ROOT", None)
    out = subprocess.run([sys.executable, RUN_GRID, "--preset", "quick"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not download cifar10"), out.stderr
    for hint in ("http://127.0.0.1:9/cifar/cifar-10-python.tar.gz", "--data-root", "RECORDS_DATA_ROOT", "Parquet"):
        assert hint in lines[0]
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
