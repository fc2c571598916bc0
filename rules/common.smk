# Helpers shared by the rules: names -> paths, config -> command-line options, targets.
# No computation on data happens here; these functions only read the (validated) config.
#
# results/ holds one level per kind of output, so no dataset, model or layer name can collide with them:
#   results/labels/{dataset}/                   packed labels (rule pack_labels)
#   results/shards/{dataset}/{model}/{k}/       activations of shard k, all layers (rule extract)
#   results/layers/{dataset}/{model}/{layer}/   thresholds, tallies, counts, result.csv, summary, report/
#   results/rotation/{dataset}/{model}/{layer}/p{power}/   a `netdissect dissect --out` folder: the layer rotated
#   results/rotation/{dataset}/{model}/{layer}/sweep/      the sweep's table and charts (rules/experiments.smk)
#   results/snapshots/{dataset}/{model}/{layer}/step{step}/ and .../sweep/   the same for training snapshots
#   results/checks/  results/report/            layer checks; the cross-run report

import math
import os
import re
from pathlib import Path, PurePosixPath

import yaml

from netdissect.defaults import BATCH_SIZE
from netdissect.names import layer_file_name, layer_from_file_name

DISSECT = config["dissect"]
RESOURCES = config["resources"]
SHARDS = list(range(DISSECT["shards"]))


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    layer=r"[^/,\s]+",  # a layer as a file name (netdissect.names.layer_file_name)
    k=r"\d+",
    power=r"\d+(\.\d+)?",
    step=r"\d+",


def _check_experiments():
    """The experiment keys of every model are consistent (the schema checks each value alone; the names
    runs refer to are checked by netdissect/workflow_config.py, called by the Snakefile)."""
    for name, model in config["models"].items():
        _check_model_experiments(name, model)


def _check_model_experiments(name, model):
    """The experiment keys of a model are consistent (the schema checks each value alone)."""
    key = f"config models.{name}"
    k = model_permutations(name)
    if k and 1 / (k + 1) > DISSECT["alpha"]:
        raise ValueError(
            f"{key}.permutations (or dissect.permutations): {k} permutations cannot give a p-value <= alpha = "
            f"{DISSECT['alpha']} (the smallest is 1/(K+1)); use at least {math.ceil(1 / DISSECT['alpha'] - 1 - 1e-9)}"
        )
    rotation = model.get("rotation")
    if rotation and sorted(set(rotation["powers"])) != rotation["powers"]:
        raise ValueError(f"{key}.rotation.powers: {rotation['powers']} must increase, each power once")
    snapshots = model.get("snapshots")
    if not snapshots:
        return
    trained = model["weights"]["source"] == "train"
    if set(snapshots) != ({"layer", "steps"} if trained else {"layer", "weights"}):
        raise ValueError(
            f"{key}.snapshots: give `layer` and `steps` (saved by train-demo) for weights `source: train`, "
            f"`layer` and `weights` (one file per step) for any other source"
        )
    steps = snapshot_steps(name)
    if sorted(set(steps)) != steps:
        raise ValueError(f"{key}.snapshots: steps {steps} must increase, each step once")
    for entry in snapshots.get("weights", []):
        if ("path" in entry) == ("url" in entry):
            raise ValueError(f"{key}.snapshots.weights: step {entry['step']} needs either `path` or `url`")


def is_url(text):
    return re.match(r"https?://", text) is not None


def is_caffe(model):
    """A model whose SPEC is a Caffe deploy.prototxt (a path, or a URL fetched to models/<model>.prototxt)."""
    return config["models"][model]["spec"].lower().endswith(".prototxt")


# -- datasets -------------------------------------------------------------------------------------
def dataset_dir(dataset):
    """The Broden folder of a dataset: datasets/<name>, or the configured path for `source: path`."""
    entry = config["datasets"][dataset]
    return entry["path"] if entry["source"] == "path" else f"datasets/{dataset}"


def dataset_index(wildcards):
    """index.csv of the dataset a job works on (its presence means the dataset is complete)."""
    return os.path.join(dataset_dir(wildcards.dataset), "index.csv")


def dataset_option(wildcards):
    return dataset_dir(wildcards.dataset)


def synth_entry(wildcards):
    return config["datasets"][wildcards.dataset]


def datasets_with_source(source):
    names = [n for n, d in config["datasets"].items() if d["source"] == source]
    return "|".join(re.escape(n) for n in names) or "^$"


# -- models ---------------------------------------------------------------------------------------
def model_entry(wildcards):
    return config["models"][wildcards.model]


def spec_path(model):
    """The SPEC the commands get: the configured one, or where a prototxt URL is fetched to."""
    spec = config["models"][model]["spec"]
    return f"models/{model}.prototxt" if is_url(spec) else spec


def spec_option(wildcards):
    return spec_path(wildcards.model)


def spec_input(wildcards):
    """The prototxt of a Caffe model (fetched first when the SPEC is a URL); nothing for other SPECs."""
    return [spec_path(wildcards.model)] if is_caffe(wildcards.model) else []


def models_with_url_spec():
    names = [n for n, m in config["models"].items() if is_url(m["spec"])]
    return "|".join(re.escape(n) for n in names) or "^$"


def weights_file(model):
    """The weights file a model's config names, or None when its SPEC carries its own weights."""
    weights = config["models"][model]["weights"]
    return {
        "train": f"models/{model}.pt",
        "random": f"models/{model}.pt",
        "download": f"models/{model}.caffemodel" if is_caffe(model) else f"models/{model}.pth",
        "path": weights.get("path"),
        "none": None,
    }[weights["source"]]


def weights_input(wildcards):
    path = weights_file(wildcards.model)
    return [path] if path else []


def recompute_weights(wildcards):
    """The model files a job that reruns the forward pass reads (dissect.activations: recompute): the
    weights, and a Caffe model's prototxt (its mean is recorded in the shard)."""
    if DISSECT["activations"] != "recompute":
        return []
    return spec_input(wildcards) + weights_input(wildcards)


def activations_option():
    return "--recompute" if DISSECT["activations"] == "recompute" else ""


def weights_option(wildcards):
    path = weights_file(wildcards.model)
    return f"--weights {path}" if path else ""


def normalisation_options(wildcards):
    """--mean/--std/--mean-file of the model, when the config sets them (else the engine's defaults:
    ImageNet's for torch models, the original system's BGR mean for Caffe models)."""
    entry = model_entry(wildcards)
    opts = []
    for key in ("mean", "std"):
        if entry[key] is not None:
            opts.append(f"--{key} " + ",".join(repr(float(v)) for v in entry[key]))
    if entry["mean_file"]:
        opts.append(f"--mean-file {entry['mean_file']}")
    return " ".join(opts)


def tokens_option(wildcards):
    """--tokens of the model, when the config sets it (token layers: patch grid or class token)."""
    tokens = model_entry(wildcards)["tokens"]
    return f"--tokens {tokens}" if tokens else ""


def mean_file_input(wildcards):
    path = model_entry(wildcards)["mean_file"]
    return [path] if path else []


def model_layers(model):
    return config["models"][model]["layers"]


def layers_option(wildcards):
    return ",".join(model_layers(wildcards.model))


def layer_name(wildcards):
    """The real name of the layer whose file name is the {layer} wildcard."""
    return layer_from_file_name(wildcards.layer)


def layers_ok(wildcards):
    """The cheap check that the model's SPEC loads and has every configured layer."""
    return f"results/checks/{wildcards.model}.layers.ok"


def weights_entry(wildcards):
    return config["models"][wildcards.model]["weights"]


def models_with_weights(*sources):
    names = [n for n, m in config["models"].items() if m["weights"]["source"] in sources]
    return "|".join(re.escape(n) for n in names) or "^$"


# -- shards and layers ----------------------------------------------------------------------------
def labels_dir(wildcards):
    """The packed labels of the dataset a job works on."""
    return f"results/labels/{wildcards.dataset}"


def shard_dir(dataset, model, k):
    return f"results/shards/{dataset}/{model}/{k}"


def all_shard_dirs(wildcards):
    return [shard_dir(wildcards.dataset, wildcards.model, k) for k in SHARDS]


def layer_dir(dataset, model, layer):
    """results/layers/{dataset}/{model}/{layer}, the layer as a file name (inception_5b%2Foutput)."""
    return f"results/layers/{dataset}/{model}/{layer_file_name(layer)}"


def thresholds_input(wildcards):
    """A configured thresholds file (`models.<m>.thresholds`), else nothing: quantiles are computed."""
    pattern = model_entry(wildcards)["thresholds"]
    return [pattern.format(layer=wildcards.layer)] if pattern else []


def quantile_option(wildcards, input):
    """A thresholds file, or the configured q; with a preset and the default q, nothing: the q the
    shards were extracted for (the preset's)."""
    if input.thresholds_file:
        return f"--thresholds {input.thresholds_file[0]}"
    return f"--quantile {DISSECT['quantile']!r}" if _given("quantile") else ""


_DISSECT_SCHEMA = yaml.safe_load(Path(workflow.basedir, "config", "schema.yaml").read_text())["properties"]["dissect"]


def _given(key):
    """Whether `dissect.<key>` is the user's choice: always without a preset; with one, when it differs
    from the schema's default (keys left at their defaults take the preset's values)."""
    return DISSECT["preset"] is None or DISSECT[key] != _DISSECT_SCHEMA["properties"][key]["default"]


def convention_options(*keys):
    """`--preset P` (when configured) and `--<key> value` for each given convention key."""
    opts = [f"--preset {DISSECT['preset']}"] if DISSECT["preset"] else []
    for key in keys:
        if _given(key):
            value = DISSECT[key]
            opts.append(f"--{key} {value!r}" if isinstance(value, float) else f"--{key} {value}")
    return " ".join(opts)


def upsample_check_option():
    """`--upsample fieldmap` for the layer check when the masks need field maps (a layer without one fails first)."""
    preset = DISSECT["preset"]
    upsample = DISSECT["upsample"] if _given("upsample") else {"original": "fieldmap"}.get(preset, "bilinear")
    return "--upsample fieldmap" if upsample == "fieldmap" else ""


def categories_option():
    cats = DISSECT["categories"]
    return f"--categories {','.join(cats)}" if cats else ""


def model_permutations(model):
    """K of the model's significance test: its `permutations`, else `dissect.permutations` (0 = none)."""
    k = config["models"][model].get("permutations")
    return DISSECT["permutations"] if k is None else k


def significance_input(wildcards):
    """The layer's significance.csv when its model is tested (rules score and report_layer then read it)."""
    if model_permutations(wildcards.model):
        return [f"{layer_dir(wildcards.dataset, wildcards.model, layer_name(wildcards))}/significance.csv"]
    return []


def significance_option(wildcards, input):
    return f"--significance {input.significance[0]}" if input.significance else ""


# -- experiments (rules/experiments.smk) ----------------------------------------------------------
def dissect_options(wildcards, weights=None):
    """The options of a one-process `netdissect dissect` of the model on the dataset with the run's settings
    (no --layers, --out, --labels); `weights`: another weights file than the model's. No layer report
    (--no-report): a sweep reads result.csv and summary.json only; `netdissect report` on a point's layer
    folder writes one later (its summary.json records the dataset and shards)."""
    if weights is None:
        weights = weights_option(wildcards)
    else:
        weights = f"--weights {weights}"
    return (
        f"--dataset {dataset_option(wildcards)} --model {spec_option(wildcards)} {weights}"
        f" {normalisation_options(wildcards)} {tokens_option(wildcards)}"
        f" {convention_options('quantile', 'union', 'upsample')} {categories_option()}"
        f" --iou-threshold {DISSECT['iou_threshold']!r} --dtype {DISSECT['dtype']}"
        f" --batch-size {DISSECT['batch_size']} --workers {DISSECT['workers']} --device {DISSECT['device']}"
        " --no-progress --no-report"
    )


def power_name(power):
    """A rotation power as it appears in paths and on the command line: 0, 0.2, 1."""
    return f"{float(power):g}"


# The experiments' functions take a layer's real name (config `rotation.layer`, `snapshots.layer`; in a
# rule: layer_name(wildcards)); paths hold its file name, as results/layers/ does.
def rotation_dir(dataset, model, layer, power):
    return f"results/rotation/{dataset}/{model}/{layer_file_name(layer)}/p{power_name(power)}"


def rotation_point(dataset, model, layer, power):
    """The layer folder of one point of a rotation sweep; power 0 is the unrotated layer itself (the same
    numbers: nothing is rotated), when the run dissects that layer anyway."""
    if float(power) == 0 and (dataset, model) in run_pairs() and layer in model_layers(model):
        return layer_dir(dataset, model, layer)
    return f"{rotation_dir(dataset, model, layer, power)}/{layer_file_name(layer)}"


def point_inputs(points):
    """What a sweep reads: each point's folder (a dissect output, the parent of its layer folder) or, for a
    point that is a layer of the run itself, that layer's files."""
    paths = []
    for point in points:
        if point.startswith("results/layers/"):
            paths += [f"{point}/result.csv", f"{point}/summary.json"]
        else:
            paths.append(os.path.dirname(point))
    return paths


def rotation_sweep_inputs(wildcards):
    layer = layer_name(wildcards)
    powers = config["models"][wildcards.model]["rotation"]["powers"]
    return point_inputs([rotation_point(wildcards.dataset, wildcards.model, layer, p) for p in powers])


def rotation_points_option(wildcards):
    powers = config["models"][wildcards.model]["rotation"]["powers"]
    layer = layer_name(wildcards)
    return " ".join(f"{power_name(p)}={rotation_point(wildcards.dataset, wildcards.model, layer, p)}" for p in powers)


def snapshot_steps(model):
    snapshots = config["models"][model]["snapshots"]
    return snapshots["steps"] if "steps" in snapshots else [w["step"] for w in snapshots["weights"]]


def snapshot_entry(model, step):
    """The config entry of a downloaded or given snapshot file ({step, path} or {step, url, sha256})."""
    return next(w for w in config["models"][model]["snapshots"].get("weights", []) if w["step"] == int(step))


def snapshot_file(model, step):
    """The weights file of the snapshot at `step`: saved by train-demo (models/<model>.snapshots/step<S>.pt,
    the name netdissect.experiments.snapshots.snapshot_name gives), fetched, or the configured path."""
    if config["models"][model]["weights"]["source"] == "train":
        return f"models/{model}.snapshots/step{int(step)}.pt"
    entry = snapshot_entry(model, step)
    return entry.get("path") or f"models/{model}.snapshots/step{int(step)}.pth"


def snapshot_input(wildcards):
    """What a snapshot's dissection needs: the snapshots folder train-demo writes, or the one file."""
    if config["models"][wildcards.model]["weights"]["source"] == "train":
        return [f"models/{wildcards.model}.snapshots"]
    return [snapshot_file(wildcards.model, wildcards.step)]


def snapshot_dir(dataset, model, layer, step):
    return f"results/snapshots/{dataset}/{model}/{layer_file_name(layer)}/step{int(step)}"


def trained_steps(model):
    """The optimiser steps of a model the workflow trains (weights `source: train`), when the size of its
    training dataset is known before the dataset exists (a synthetic one: `images`); otherwise None."""
    weights = config["models"][model]["weights"]
    if weights["source"] != "train":
        return None
    dataset = config["datasets"][weights["dataset"]]
    if dataset.get("source") != "synth":
        return None
    # one step per batch of train-demo's default batch size, every epoch: netdissect.demo.train.training_steps
    # (not imported: it would bring torch into every parse of the workflow)
    return weights["epochs"] * math.ceil(dataset["images"] / BATCH_SIZE)


def snapshot_point(dataset, model, layer, step):
    """The layer folder of one point of a snapshot sweep. The last step of the workflow's own training is the
    trained model itself (the same weights; tests/test_snapshots.py), so when the run dissects that layer
    anyway the point is that layer, as power 0 of a rotation sweep is."""
    if int(step) == trained_steps(model) and (dataset, model) in run_pairs() and layer in model_layers(model):
        return layer_dir(dataset, model, layer)
    return f"{snapshot_dir(dataset, model, layer, step)}/{layer_file_name(layer)}"


def snapshot_points(wildcards):
    layer = layer_name(wildcards)
    return [snapshot_point(wildcards.dataset, wildcards.model, layer, s) for s in snapshot_steps(wildcards.model)]


def snapshot_sweep_inputs(wildcards):
    return point_inputs(snapshot_points(wildcards))


def snapshot_points_option(wildcards):
    return " ".join(f"{s}={d}" for s, d in zip(snapshot_steps(wildcards.model), snapshot_points(wildcards)))


def models_with(key, source=None, has=True):
    """Names of the models that have (or lack) an experiment key (`rotation`, `snapshots`), optionally
    only those whose weights come from `source`; a wildcard pattern."""
    names = [
        n
        for n, m in config["models"].items()
        if bool(m.get(key)) == has and (source is None or m["weights"]["source"] == source)
    ]
    return "|".join(re.escape(n) for n in names) or "^$"


def downloaded_snapshots():
    return (
        "|".join(
            re.escape(f"{n}.snapshots/step{w['step']}")
            for n, m in config["models"].items()
            for w in (m.get("snapshots") or {}).get("weights", [])
            if "url" in w
        )
        or "^$"
    )


def experiment_sweeps(key):
    """The sweep.json of every (dataset, model) of the runs whose model has `key` (rotation, snapshots)."""
    return [
        f"results/{key}/{d}/{m}/{layer_file_name(config['models'][m][key]['layer'])}/sweep/sweep.json"
        for d, m in run_pairs()
        if config["models"][m].get(key)
    ]


# -- resources ------------------------------------------------------------------------------------
def res(stage, key):
    """One resource (threads, mem_mb, runtime, gpu) of a stage, from config `resources.<stage>`."""
    return RESOURCES[stage][key]


def tally_parallel(wildcards, threads):
    """How a tally reads and counts: on the CPU with the job's threads (`--threads`), on a GPU with the
    configured loader processes (`--workers`)."""
    if DISSECT["device"] == "cpu":
        return f"--threads {threads}"
    return f"--workers {DISSECT['workers']}"


# -- regeneration (rules/sources.smk) -------------------------------------------------------------
SOURCES = config.get("sources", {})


def _downloads(extract):
    """(source, path) -> download entry, for the entries that are (or are not) archives to unpack."""
    return {
        (s, d["path"]): d
        for s, entry in SOURCES.items()
        for d in entry.get("downloads", [])
        if d.get("extract", True) == extract
    }


def _path_pattern(extract):
    return "|".join(re.escape(p) for _, p in _downloads(extract)) or "^$"


def _download(wc, extract):
    return _downloads(extract)[(wc.source, wc.path)]


def _sha_option(entry):
    return f"--sha256 {entry['sha256']}" if entry.get("sha256") else ""


def _archive_path(wc):
    """Where an archive is kept: named after its place AND its URL's file name (PASCAL-Context and
    PASCAL-Part both ship a `trainval.tar.gz`)."""
    name = PurePosixPath(_download(wc, True)["url"]).name
    place = "_".join(PurePosixPath(wc.path).parts)
    return f"datasets/downloads/{wc.source}/{place}__{name}"


def source_root(source):
    """The folder handed to `netdissect broden regenerate --<source>`."""
    return os.path.normpath(f"datasets/sources/{source}/{SOURCES[source].get('root', '.')}")


def regen_entry(wc):
    return config["datasets"][wc.dataset]


def regen_inputs(wc):
    """Every fetched piece of every source the dataset is built from."""
    paths = []
    for source in regen_entry(wc)["sources"]:
        if source not in SOURCES:
            raise ValueError(
                f"config datasets.{wc.dataset}.sources: {source!r} has no entry under `sources` "
                f"(defined: {', '.join(SOURCES) or 'none'})"
            )
        paths += [f"datasets/sources/{source}/{d['path']}" for d in SOURCES[source].get("downloads", [])]
    return paths


def regen_options(wc):
    entry = regen_entry(wc)
    opts = [f"--{s} {source_root(s)}" for s in entry["sources"]]
    opts.append(f"--min-frequency {entry.get('min_frequency', 10)} --min-coverage {entry.get('min_coverage', 0.5)}")
    if entry.get("color_table"):
        opts.append(f"--color-table {entry['color_table']}")
    return " ".join(opts)


# -- targets --------------------------------------------------------------------------------------
def run_pairs():
    """Every (dataset, model) pair the config's `runs` ask for, in config order, without repeats."""
    pairs = []
    for run in config["runs"]:
        for model in run["models"]:
            if (run["dataset"], model) not in pairs:
                pairs.append((run["dataset"], model))
    return pairs


def all_layer_dirs():
    return [layer_dir(d, m, layer) for d, m in run_pairs() for layer in model_layers(m)]


def all_results():
    return [f"{d}/result.csv" for d in all_layer_dirs()]


def all_layer_reports():
    """The per-layer report folders (rule report_layer; index.html inside)."""
    return [f"{d}/report" for d in all_layer_dirs()]


def all_significance():
    return [
        f"{layer_dir(d, m, layer)}/significance.csv"
        for d, m in run_pairs()
        if model_permutations(m)
        for layer in model_layers(m)
    ]


def all_layer_checks():
    return sorted({f"results/checks/{m}.layers.ok" for _, m in run_pairs()})


_check_experiments()
