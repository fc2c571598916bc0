# Datasets: datasets/{dataset}/index.csv, by the dataset's `source` (config `datasets.<name>`).
# A dataset folder is complete when its index.csv exists: every writer writes index.csv last.


rule synth_dataset:
    """A synthetic Broden-format dataset (offline, deterministic)."""
    output:
        "datasets/{dataset}/index.csv",
    log:
        "logs/datasets/{dataset}.synth.log",
    wildcard_constraints:
        dataset=datasets_with_source("synth"),
    conda:
        "../envs/netdissect.yaml"
    threads: res("dataset", "threads")
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    params:
        out=lambda wc: f"datasets/{wc.dataset}",
        images=lambda wc: synth_entry(wc)["images"],
        size=lambda wc: synth_entry(wc)["size"],
        seed=lambda wc: synth_entry(wc)["seed"],
    shell:
        "netdissect synth {params.out} --images {params.images} --size {params.size} --seed {params.seed}"
        " > {log} 2>&1"


rule download_dataset:
    """A released Broden zip (e.g. broden1_224.zip), fetched, checked and unpacked into datasets/."""
    output:
        "datasets/{dataset}/index.csv",
    log:
        "logs/datasets/{dataset}.fetch.log",
    wildcard_constraints:
        dataset=datasets_with_source("download"),
    conda:
        "../envs/netdissect.yaml"
    threads: 1
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    params:
        url=lambda wc: config["datasets"][wc.dataset]["url"],
        sha256=lambda wc: (
            f"--sha256 {config['datasets'][wc.dataset]['sha256']}" if config["datasets"][wc.dataset]["sha256"] else ""
        ),
    shell:
        "netdissect fetch {params.url} --out datasets/{wildcards.dataset}.zip {params.sha256} --no-progress"
        " --extract datasets/{wildcards.dataset} --strip 1"
        " > {log} 2>&1"


rule check_dataset:
    """`netdissect broden check`: the format is valid (on demand: snakemake results/checks/<dataset>.broden.ok)."""
    input:
        dataset_index,
    output:
        "results/checks/{dataset}.broden.ok",
    log:
        "logs/checks/{dataset}.broden.log",
    conda:
        "../envs/netdissect.yaml"
    threads: 1
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    params:
        root=dataset_option,
    shell:
        "netdissect broden check {params.root} --out {output} 2> {log}"


rule pack_labels:
    """Every label PNG of the dataset decoded once into results/labels/{dataset}, read by every tally."""
    input:
        dataset_index,
    output:
        directory("results/labels/{dataset}"),
    log:
        "logs/{dataset}/pack_labels.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("dataset", "threads")
    resources:
        mem_mb=res("dataset", "mem_mb"),
        runtime=res("dataset", "runtime"),
    params:
        root=dataset_option,
    shell:
        "netdissect broden pack-labels {params.root} --out {output} --workers {threads} --no-progress > {log} 2>&1"
