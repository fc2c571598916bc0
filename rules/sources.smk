# Regenerating Broden from its source datasets (docs/broden-sources.md; README "Regenerating Broden").
#   datasets/sources/{source}/{path}   <- fetch_source_archive / fetch_source_file (config `sources.<source>.downloads`)
#   datasets/{dataset}/index.csv       <- regenerate_broden (config `datasets.<name>` with `source: regenerate`)
# Config keys read here: datasets.<name>.{size, sources, min_frequency, min_coverage, color_table} and
# sources.<source>.{root, downloads[].{url, sha256, path, strip, extract}}; see config/examples/regenerate.yaml.

# Helpers: rules/common.smk, section "regeneration".


rule fetch_source_archive:
    """One archive of a source dataset, downloaded (resumable, verified) and unpacked into its place."""
    output:
        directory("datasets/sources/{source}/{path}"),
    log:
        "logs/sources/{source}/{path}.fetch.log",
    wildcard_constraints:
        path=_path_pattern(True),
    conda:
        "../envs/netdissect.yaml"
    threads: 1
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    params:
        url=lambda wc: _download(wc, True)["url"],
        sha256=lambda wc: _sha_option(_download(wc, True)),
        strip=lambda wc: _download(wc, True).get("strip", 0),
        archive=lambda wc: _archive_path(wc),
    shell:
        "netdissect fetch {params.url} --out {params.archive} {params.sha256} --extract {output}"
        " --strip {params.strip} --no-progress > {log} 2>&1"


rule fetch_source_file:
    """One plain file of a source dataset (e.g. PASCAL-Context's labels.txt), downloaded and verified."""
    output:
        "datasets/sources/{source}/{path}",
    log:
        "logs/sources/{source}/{path}.fetch.log",
    wildcard_constraints:
        path=_path_pattern(False),
    conda:
        "../envs/netdissect.yaml"
    threads: 1
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    params:
        url=lambda wc: _download(wc, False)["url"],
        sha256=lambda wc: _sha_option(_download(wc, False)),
    shell:
        "netdissect fetch {params.url} --out {output} {params.sha256} --no-progress > {log} 2>&1"


rule regenerate_broden:
    """A Broden folder rebuilt from the source datasets: statistics, naming, filtering, resizing, writing."""
    input:
        regen_inputs,
    output:
        "datasets/{dataset}/index.csv",
    log:
        "logs/datasets/{dataset}.regenerate.log",
    wildcard_constraints:
        dataset=datasets_with_source("regenerate"),
    conda:
        "../envs/netdissect.yaml"
    threads: res("dataset", "threads")
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    params:
        out=lambda wc: f"datasets/{wc.dataset}",
        size=lambda wc: regen_entry(wc)["size"],
        options=regen_options,
    shell:
        "netdissect broden regenerate --out {params.out} --size {params.size} {params.options}"
        " --workers {threads} --no-progress > {log} 2>&1"
