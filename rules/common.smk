# Helpers shared by the rules: names -> paths, config -> command-line options, targets.
# No computation on data happens here; these functions only read the (validated) config.

import os
import re

DISSECT = config["dissect"]
RESOURCES = config["resources"]
SHARDS = list(range(DISSECT["shards"]))


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    layer=r"(?!shards$|report$)[^/,\s]+",
    k=r"\d+",


def _check_names():
    """Fail at startup, naming the config key, when a run refers to an undefined dataset or model."""
    for i, run in enumerate(config["runs"]):
        if run["dataset"] not in config["datasets"]:
            raise ValueError(f"config runs[{i}].dataset: {run['dataset']!r} is not a key of `datasets` "
                             f"(defined: {', '.join(config['datasets'])})")
        for model in run["models"]:
            if model not in config["models"]:
                raise ValueError(f"config runs[{i}].models: {model!r} is not a key of `models` "
                                 f"(defined: {', '.join(config['models'])})")
    for name, model in config["models"].items():
        weights = model["weights"]
        if weights["source"] == "train" and weights["dataset"] not in config["datasets"]:
            raise ValueError(f"config models.{name}.weights.dataset: {weights['dataset']!r} is not a key of "
                             f"`datasets` (defined: {', '.join(config['datasets'])})")


_check_names()


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


def weights_file(model):
    """The weights file a model's config names, or None when its SPEC carries its own weights."""
    weights = config["models"][model]["weights"]
    return {
        "train": f"models/{model}.pt",
        "random": f"models/{model}.pt",
        "download": f"models/{model}.pth",
        "path": weights.get("path"),
        "none": None,
    }[weights["source"]]


def weights_input(wildcards):
    path = weights_file(wildcards.model)
    return [path] if path else []


def weights_option(wildcards):
    path = weights_file(wildcards.model)
    return f"--weights {path}" if path else ""


def normalisation_options(wildcards):
    """--mean/--std of the model, when the config sets them (else the engine's ImageNet defaults)."""
    entry = model_entry(wildcards)
    opts = []
    for key in ("mean", "std"):
        if entry[key] is not None:
            opts.append(f"--{key} " + ",".join(repr(float(v)) for v in entry[key]))
    return " ".join(opts)


def model_layers(model):
    return config["models"][model]["layers"]


def layers_option(wildcards):
    return ",".join(model_layers(wildcards.model))


def layers_ok(wildcards):
    """The cheap check that the model's SPEC loads and has every configured layer."""
    return f"results/checks/{wildcards.model}.layers.ok"


def weights_entry(wildcards):
    return config["models"][wildcards.model]["weights"]


def models_with_weights(*sources):
    names = [n for n, m in config["models"].items() if m["weights"]["source"] in sources]
    return "|".join(re.escape(n) for n in names) or "^$"


# -- shards and layers ----------------------------------------------------------------------------
def shard_dir(dataset, model, k):
    return f"results/{dataset}/{model}/shards/{k}"


def all_shard_dirs(wildcards):
    return [shard_dir(wildcards.dataset, wildcards.model, k) for k in SHARDS]


def layer_dir(dataset, model, layer):
    return f"results/{dataset}/{model}/{layer}"


def thresholds_input(wildcards):
    """A configured thresholds file (`models.<m>.thresholds`), else nothing: quantiles are computed."""
    pattern = model_entry(wildcards)["thresholds"]
    return [pattern.format(layer=wildcards.layer)] if pattern else []


def quantile_option(wildcards, input):
    if input.thresholds_file:
        return f"--thresholds {input.thresholds_file[0]}"
    return f"--quantile {DISSECT['quantile']!r}"


def categories_option():
    cats = DISSECT["categories"]
    return f"--categories {','.join(cats)}" if cats else ""


# -- resources ------------------------------------------------------------------------------------
def res(stage, key):
    """One resource (threads, mem_mb, runtime, gpu) of a stage, from config `resources.<stage>`."""
    return RESOURCES[stage][key]


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
    return [f"{d}/report/index.html" for d in all_layer_dirs()]


def all_layer_checks():
    return sorted({f"results/checks/{m}.layers.ok" for _, m in run_pairs()})
