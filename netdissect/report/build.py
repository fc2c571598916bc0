"""A layer's report from its folder: find what it needs, read it, write ``LAYER_DIR/report/``.

A layer folder of a dissection holds ``result.csv``, ``summary.json`` and ``thresholds.npy``. Its
``summary.json`` says which layer it is (``layer``) and where the dataset and the shards (the
activations) are: ``paths`` (relative to the layer folder, written by ``netdissect score``/``dissect``),
else the ``dataset`` path of ``settings`` as the tally was given it. Options given explicitly win.
Both layouts work: ``dissect``'s (OUT/shards/0, OUT/<layer>) and the workflow's
(results/shards/{dataset}/{model}/{k}, results/layers/{dataset}/{model}/{layer}).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netdissect.defaults import JPEG_QUALITY, REPORT_THREADS, TOPK, UPSAMPLE
from netdissect.errors import NetDissectError

LAYER_FILES = {
    "result.csv": "`netdissect score` or `netdissect dissect`",
    "summary.json": "`netdissect score` or `netdissect dissect`",
    "thresholds.npy": "`netdissect quantile` or `netdissect dissect`",
}


@dataclass(frozen=True)
class LayerInputs:
    """Everything the report of one layer reads, resolved to paths."""

    layer_dir: Path
    dataset: Path
    shards: list[Path]
    layer: str
    summary: dict[str, Any]


def check_layer_dir(layer_dir: Path) -> None:
    """Refuse a folder that is not a layer folder of a dissection, naming what is missing."""
    if not layer_dir.is_dir():
        raise NetDissectError(f"{layer_dir}: no such folder; expected a layer folder of a dissection (OUT/<layer>).")
    missing = [f"{name} (written by {by})" for name, by in LAYER_FILES.items() if not (layer_dir / name).is_file()]
    if missing:
        raise NetDissectError(
            f"{layer_dir} is not a layer folder of a dissection: it lacks {', '.join(missing)}. Pass the folder "
            "of one layer, e.g. OUT/<layer> of `netdissect dissect --out OUT` or results/layers/<dataset>/<model>/<layer>."
        )


def _recorded(layer_dir: Path, summary: dict[str, Any]) -> tuple[Path | None, list[Path], list[str]]:
    """The dataset and shard folders summary.json records, and where it looked (for the error message)."""
    paths = summary.get("paths") if isinstance(summary.get("paths"), dict) else {}
    settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    looked, dataset = [], None
    candidates = []
    if isinstance(paths.get("dataset"), str):
        candidates.append(layer_dir / paths["dataset"])
    if isinstance(settings.get("dataset"), str):
        candidates.append(Path(settings["dataset"]))
    for candidate in candidates:
        looked.append(str(candidate))
        if (candidate / "index.csv").is_file():
            dataset = candidate
            break
    shards = [layer_dir / s for s in paths.get("shards", []) if isinstance(s, str)]
    return dataset, shards, looked


def layer_inputs(
    layer_dir: str | Path,
    dataset: str | Path | None = None,
    shards: Sequence[str | Path] | None = None,
    layer: str | None = None,
) -> LayerInputs:
    """Resolve the dataset, the shard folders and the layer name of ``layer_dir`` (module docstring)."""
    from netdissect.names import layer_from_file_name
    from netdissect.report.results import read_summary

    layer_dir = Path(layer_dir)
    check_layer_dir(layer_dir)
    summary = read_summary(layer_dir / "summary.json")
    recorded_dataset, recorded_shards, looked = _recorded(layer_dir, summary)
    if dataset is None:
        if recorded_dataset is None:
            where = f" (it records {', '.join(looked)}, which holds no index.csv)" if looked else ""
            raise NetDissectError(
                f"{layer_dir / 'summary.json'} does not say where the dataset is{where}; pass --dataset DIR."
            )
        dataset = recorded_dataset
    if not shards:
        if not recorded_shards:
            raise NetDissectError(
                f"{layer_dir / 'summary.json'} does not say where the shards (the activations) are; pass "
                "--shards SHARD_DIR... (OUT/shards/0 of `netdissect dissect`, results/shards/<dataset>/<model>/* "
                "of the workflow)."
            )
        absent = [str(s) for s in recorded_shards if not (s / "meta.json").is_file()]
        if absent:
            raise NetDissectError(
                f"{layer_dir / 'summary.json'} records the shard folder(s) {', '.join(absent)}, which are not "
                "there (no meta.json); pass --shards SHARD_DIR... where the activations are now."
            )
        shards = recorded_shards
    settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    name = layer or summary.get("layer") or settings.get("layer") or layer_from_file_name(layer_dir.name)
    return LayerInputs(layer_dir, Path(dataset), [Path(s) for s in shards], str(name), summary)


def dissection_names(layer_dir: Path, summary: dict[str, Any]) -> tuple[str, str, str]:
    """(dataset, model, layer) shown on the pages: from summary.json (the dataset: its folder's name),
    else from the folders results/layers/{dataset}/{model}/{layer}."""
    from netdissect.names import layer_from_file_name

    parts = layer_dir.resolve().parts
    fallback = dict(zip(("dataset", "model", "layer"), parts[-3:] if len(parts) >= 3 else ("", "", parts[-1])))
    fallback["layer"] = layer_from_file_name(fallback["layer"])  # the folder holds the layer's file name
    settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    if isinstance(settings.get("dataset"), str) and settings["dataset"]:
        fallback["dataset"] = Path(settings["dataset"]).name
    names = []
    for key in ("dataset", "model", "layer"):
        value = summary.get(key)
        if isinstance(value, dict):
            value = value.get("name")
        names.append(str(value) if value else fallback[key])
    return names[0], names[1], names[2]


def write_layer_report(
    layer_dir: str | Path,
    out: str | Path | None = None,
    *,
    dataset: str | Path | None = None,
    shards: Sequence[str | Path] | None = None,
    layer: str | None = None,
    topk: int = TOPK,
    quality: int = JPEG_QUALITY,
    threads: int = REPORT_THREADS,
    upsample: str | None = None,
) -> Path:
    """Write the report of ``layer_dir`` into ``out`` (default ``layer_dir/report``); return its index.html.
    The masks are upsampled as the counts were (summary.json's settings) unless ``upsample`` says otherwise
    (then the page says so). With a significance.csv in ``layer_dir`` (``netdissect significance``), each
    unit shows its p."""
    import logging

    import torch

    from netdissect.broden import BrodenDataset
    from netdissect.pipeline import layer_upsampling
    from netdissect.recompute import ActivationReader
    from netdissect.report.layer import render_layer_report
    from netdissect.report.results import read_result_csv
    from netdissect.shards import layer_shards, read_imgmax

    inputs = layer_inputs(layer_dir, dataset, shards, layer)
    result, categories = read_result_csv(inputs.layer_dir / "result.csv")
    dataset_name, model, _ = dissection_names(inputs.layer_dir, inputs.summary)
    path = inputs.layer_dir / "thresholds.npy"
    try:
        thresholds = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise NetDissectError(f"{path}: not a readable .npy array ({err}); rerun `netdissect quantile`.") from err
    imgmax = read_imgmax(inputs.shards, inputs.layer)
    p_values, alpha = {}, None
    if (inputs.layer_dir / "significance.csv").is_file():  # docs/experiments.md §3
        from netdissect.experiments.significance import read_significance

        test = read_significance(inputs.layer_dir / "significance.csv", len(result))
        p_values, alpha = {u + 1: float(p) for u, p in enumerate(test["p"])}, float(test["alpha"])
    counted_with = (inputs.summary.get("settings") or {}).get("upsample")
    if upsample and counted_with and upsample != counted_with:
        logging.getLogger(__name__).warning(
            "--upsample %s: the counts of %s used %s; the masks shown will differ from the counted ones",
            upsample,
            inputs.layer_dir,
            counted_with,
        )
    _, meta = layer_shards(inputs.shards, inputs.layer)[0]
    mode = layer_upsampling(upsample or counted_with or UPSAMPLE, meta["layers"][inputs.layer], meta, inputs.layer)
    images = BrodenDataset(inputs.dataset, load_labels=False)
    if imgmax.shape[0] != len(images):
        raise NetDissectError(
            f"the shards {' '.join(map(str, inputs.shards))} hold {imgmax.shape[0]} images but the dataset "
            f"{inputs.dataset} has {len(images)}; pass the dataset the layer was dissected on."
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the work is split by ``threads`` Python threads; torch ops here are small
    try:
        with ActivationReader(inputs.shards, inputs.layer, inputs.dataset, torch_threads=previous) as maps_for_rows:
            return render_layer_report(
                Path(out) if out is not None else inputs.layer_dir / "report",
                result,
                categories,
                {**inputs.summary, "dataset": dataset_name, "model": model, "layer": inputs.layer},
                thresholds,
                imgmax,
                maps_for_rows=maps_for_rows,
                load_image=lambda row: images[row]["image"],
                topk=topk,
                quality=quality,
                threads=threads,
                upsample=mode,
                p_values=p_values,
                alpha=alpha,
            )
    finally:
        torch.set_num_threads(previous)
