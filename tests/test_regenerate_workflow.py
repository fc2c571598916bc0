"""rules/sources.smk end to end: real Snakemake fetches source archives from a server on 127.0.0.1,
unpacks them and regenerates a Broden folder that the reader accepts."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from netdissect.broden.sources.fixtures import AdeImage, write_ade20k, write_dtd
from netdissect.broden.writer import nearest_indices

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _schema_knows_sources() -> bool:
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    return "sources" in schema.get("properties", {})


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_snakemake_fetches_and_regenerates(served, tmp_path):
    if not _schema_knows_sources():
        pytest.skip("config/schema.yaml does not describe the `sources` key yet (owned by the workflow)")
    www, base = served
    build = tmp_path / "build"
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[:, 8:] = (250, 10, 10)
    objects = np.ones((12, 16), int)
    objects[:, 8:] = 2
    write_ade20k(
        build / "ade",
        [
            AdeImage("ADE_train_00000001.jpg", "training/s/street", "street", rgb, objects),
            AdeImage("ADE_train_00000002.jpg", "training/s/street", "street", rgb, objects),
        ],
        ["wall", "car, auto"],
    )
    shutil.make_archive(str(www / "ADE20K_2016_07_26"), "zip", build / "ade", "ADE20K_2016_07_26")
    write_dtd(build / "dtd", [("banded/banded_0002.jpg", rgb, ["banded"]), ("banded/banded_0003.jpg", rgb, ["banded"])])
    with tarfile.open(www / "dtd-r1.0.1.tar.gz", "w:gz") as tar:
        tar.add(build / "dtd" / "dtd-r1.0.1", arcname="dtd")
    zip_sha = hashlib.sha256((www / "ADE20K_2016_07_26.zip").read_bytes()).hexdigest()
    config = {
        "datasets": {
            "broden_regen_224": {
                "source": "regenerate",
                "size": 224,
                "sources": ["ade20k", "dtd"],
                "min_frequency": 2,
                "min_coverage": 0.5,
                "color_table": None,
            }
        },
        "sources": {
            "ade20k": {
                "root": ".",
                "downloads": [
                    {"url": f"{base}/ADE20K_2016_07_26.zip", "sha256": zip_sha, "path": "ADE20K_2016_07_26", "strip": 1}
                ],
            },
            "dtd": {
                "root": "dtd-r1.0.1",
                "downloads": [{"url": f"{base}/dtd-r1.0.1.tar.gz", "sha256": None, "path": "dtd-r1.0.1", "strip": 1}],
            },
        },
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(work),
            "--cores",
            "2",
            "datasets/broden_regen_224/index.csv",
            "--configfile",
            str(work / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = "\n".join(p.read_text() for p in (work / "logs").rglob("*.log")) if (work / "logs").exists() else ""
    assert result.returncode == 0, result.stderr[-3000:] + logs
    assert (work / "datasets/sources/ade20k/ADE20K_2016_07_26/index_ade20k.mat").is_file()
    assert (work / "datasets/sources/dtd/dtd-r1.0.1/labels/labels_joint_anno.txt").is_file()

    from netdissect.broden import BrodenDataset

    ds = BrodenDataset(work / "datasets/broden_regen_224")
    assert len(ds) == 4
    assert {"car", "wall", "banded", "red-c"} <= set(ds.label_names)
    car = ds.label_names.index("car")
    item = ds[ds.index["image"].tolist().index("ade20k/ADE_train_00000001.jpg")]
    layers = item["pixel_labels"].numpy()
    expected = objects[np.ix_(nearest_indices(12, 112), nearest_indices(16, 112))] == 2
    assert ((layers == car).any(axis=0) == expected).all()  # car exactly where the source had it
