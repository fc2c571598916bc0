"""Memory of the quantile and tally stages does not grow with the number of images (issue 15).

The same layer (DemoNet ``conv2``: 64 units, 56x56 maps at 224 px, 392 KiB of float16 activations per
image) is extracted for N and 4N images, and each stage command runs in its own process. Its memory is
the peak resident size less the resident size after its imports (torch and netdissect alone weigh
hundreds of MB). A stage that held the layer's activations would grow by the added images' 69 MB; a
streaming one grows by its quantile candidates only (q of the values: 0.5% of that). Batches of 8 images,
so that both sizes run many batches (60 images in two batches of 32 had not yet reached the allocator's
steady state: 24 MB more at 240 images, while numpy's own peak, traced, was flat).
Measured here: a ratio, not a time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netdissect.broden.synth import synthesize

SMALL, LARGE = 60, 240
LAYER, UNITS, MAP = "conv2", 64, 56
BATCH = 8  # images per batch: both sizes run many batches, past the allocator's first growth

# Runs one CLI command in this process; prints the resident size after imports and the peak, in bytes.
MEASURE = """
import json, resource, sys
import torch
import netdissect.cli, netdissect.engine_cli, netdissect.tally, netdissect.quantile
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
base = rss()
code = netdissect.cli.main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"code": code, "base": base, "peak": peak}))
"""


def stage_growth(args: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["code"] == 0, out.stdout + out.stderr
    return record["peak"] - record["base"]


@pytest.fixture(scope="module")
def growths(tmp_path_factory) -> dict[str, dict[int, int]]:
    root = tmp_path_factory.mktemp("memory")
    synthesize(root / "broden", LARGE, size=224, seed=3, workers=2)
    lines = (root / "broden" / "index.csv").read_bytes().split(b"\r\n")
    result: dict[str, dict[int, int]] = {"quantile": {}, "tally": {}}
    for n in (SMALL, LARGE):
        data = root / f"n{n}"
        data.mkdir()
        for f in (root / "broden").iterdir():
            if f.name != "index.csv":
                (data / f.name).symlink_to(f)
        (data / "index.csv").write_bytes(b"\r\n".join([lines[0], *[x for x in lines[1:] if x][:n]]) + b"\r\n")
        shard, layer_dir = root / f"shard{n}", root / f"layer{n}"
        common = ["--no-progress", "--batch-size", str(BATCH)]
        assert (
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "netdissect",
                    "extract",
                    "--dataset",
                    str(data),
                    "--model",
                    "netdissect.demo:DemoNet",
                ]
                + ["--layers", LAYER, "--out", str(shard), *common],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        result["quantile"][n] = stage_growth(
            ["quantile", "--shards", str(shard), "--layer", LAYER, "--out", str(layer_dir)]
        )
        result["tally"][n] = stage_growth(
            ["tally", "--dataset", str(data), "--shard", str(shard), "--layer", LAYER]
            + ["--thresholds", str(layer_dir / "thresholds.npy"), "--out", str(root / f"tally{n}.npz"), *common]
        )
    return result


@pytest.mark.parametrize("stage", ["quantile", "tally"])
def test_stage_memory_does_not_grow_with_images(growths, stage) -> None:
    small, large = growths[stage][SMALL], growths[stage][LARGE]
    added = (LARGE - SMALL) * UNITS * MAP * MAP * 2  # float16 activations of the added images
    print(f"{stage}: {small / 2**20:.1f} MB at N={SMALL}, {large / 2**20:.1f} MB at N={LARGE}")
    assert large - small < 0.2 * added, (
        f"{stage} grew by {(large - small) / 2**20:.0f} MB for {added / 2**20:.0f} MB of data"
    )
    assert large <= 1.25 * small + (8 << 20), f"{stage}: {large / 2**20:.0f} MB at N={LARGE} vs {small / 2**20:.0f} MB"
