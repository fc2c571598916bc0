# Regenerating Broden from its source datasets (spec: broden-sources.md; README "Regenerating Broden").
#   datasets/sources/{source}/{path}   <- fetch_source_archive / fetch_source_file (config `sources.<source>.downloads`)
#   datasets/{dataset}/index.csv       <- regenerate_broden (config `datasets.<name>` with `source: regenerate`)
# Config keys read here: datasets.<name>.{size, sources, min_frequency, min_coverage, color_table} and
# sources.<source>.{root, downloads[].{url, sha256, path, strip, extract}}; see config/examples/regenerate.yaml.

import re

SOURCES = config.get("sources", {})


def _downloads(extract):
    """(source, path) -> download entry, for the entries that are (or are not) archives to unpack."""
    return {(s, d["path"]): d for s, entry in SOURCES.items() for d in entry.get("downloads", [])
            if d.get("extract", True) == extract}


def _path_pattern(extract):
    return "|".join(re.escape(p) for _, p in _downloads(extract)) or "^$"


def _download(wc, extract):
    return _downloads(extract)[(wc.source, wc.path)]


def _sha_option(entry):
    return f"--sha256 {entry['sha256']}" if entry.get("sha256") else ""


def _archive_path(wc):
    """Where an archive is kept: named after its place AND its URL's file name (PASCAL-Context and
    PASCAL-Part both ship a `trainval.tar.gz`)."""
    name = _download(wc, True)["url"].rsplit("/", 1)[-1]
    return f"datasets/downloads/{wc.source}/{wc.path.replace('/', '_')}__{name}"


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
            raise ValueError(f"config datasets.{wc.dataset}.sources: {source!r} has no entry under `sources` "
                             f"(defined: {', '.join(SOURCES) or 'none'})")
        paths += [f"datasets/sources/{source}/{d['path']}" for d in SOURCES[source].get("downloads", [])]
    return paths


def regen_options(wc):
    entry = regen_entry(wc)
    opts = [f"--{s} {source_root(s)}" for s in entry["sources"]]
    opts.append(f"--min-frequency {entry.get('min_frequency', 10)} --min-coverage {entry.get('min_coverage', 0.5)}")
    if entry.get("color_table"):
        opts.append(f"--color-table {entry['color_table']}")
    return " ".join(opts)


rule fetch_source_archive:
    """One archive of a source dataset, downloaded (resumable, verified) and unpacked into its place."""
    output:
        directory("datasets/sources/{source}/{path}"),
    wildcard_constraints:
        path=_path_pattern(True),
    params:
        url=lambda wc: _download(wc, True)["url"],
        sha256=lambda wc: _sha_option(_download(wc, True)),
        strip=lambda wc: _download(wc, True).get("strip", 0),
        archive=lambda wc: _archive_path(wc),
    log:
        "logs/sources/{source}/{path}.fetch.log",
    threads: 1
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    conda:
        "../envs/netdissect.yaml"
    shell:
        "netdissect fetch {params.url} --out {params.archive} {params.sha256} --extract {output}"
        " --strip {params.strip} --no-progress > {log} 2>&1"


rule fetch_source_file:
    """One plain file of a source dataset (e.g. PASCAL-Context's labels.txt), downloaded and verified."""
    output:
        "datasets/sources/{source}/{path}",
    wildcard_constraints:
        path=_path_pattern(False),
    params:
        url=lambda wc: _download(wc, False)["url"],
        sha256=lambda wc: _sha_option(_download(wc, False)),
    log:
        "logs/sources/{source}/{path}.fetch.log",
    threads: 1
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    conda:
        "../envs/netdissect.yaml"
    shell:
        "netdissect fetch {params.url} --out {output} {params.sha256} --no-progress > {log} 2>&1"


rule regenerate_broden:
    """A Broden folder rebuilt from the source datasets: statistics, naming, filtering, resizing, writing."""
    input:
        regen_inputs,
    output:
        "datasets/{dataset}/index.csv",
    wildcard_constraints:
        dataset=datasets_with_source("regenerate"),
    params:
        out=lambda wc: f"datasets/{wc.dataset}",
        size=lambda wc: regen_entry(wc)["size"],
        options=regen_options,
    log:
        "logs/datasets/{dataset}.regenerate.log",
    threads: res("dataset", "threads")
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    conda:
        "../envs/netdissect.yaml"
    shell:
        "netdissect broden regenerate --out {params.out} --size {params.size} {params.options}"
        " --workers {threads} --no-progress > {log} 2>&1"
