# Reports: one HTML page per layer, and report_all: every model x layer side by side, with links to the
# experiments' sweeps (rules/experiments.smk). The outputs marked report(...) make up Snakemake's own
# report (`snakemake --report report.zip`), with the captions in report/ (the workflow's report folder).


rule report_layer:
    """Per-layer report: headline, bar graph of detectors, top images of every unit."""
    input:
        index=dataset_index,
        result="results/layers/{dataset}/{model}/{layer}/result.csv",
        summary="results/layers/{dataset}/{model}/{layer}/summary.json",
        thresholds="results/layers/{dataset}/{model}/{layer}/thresholds.npy",
        significance=significance_input,
        shards=all_shard_dirs,
        weights=recompute_weights,
    output:
        report(
            directory("results/layers/{dataset}/{model}/{layer}/report"),
            htmlindex="index.html",
            caption="../report/layer.rst",
            category="Layers",
            subcategory="{model}",
            labels={"dataset": "{dataset}", "model": "{model}", "layer": "{layer}"},
        ),
    log:
        "logs/{dataset}/{model}/{layer}/report.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    params:
        dataset=dataset_option,
        layer=layer_name,
        layer_dir=lambda wc: layer_dir(wc.dataset, wc.model, layer_name(wc)),
        topk=DISSECT["topk"],
    shell:
        "netdissect report --dataset {params.dataset} --layer-dir {params.layer_dir} --layer {params.layer:q}"
        " --shards {input.shards} --out {output} --topk {params.topk} > {log} 2>&1"


rule report_summary:
    """Unique detectors per category for every model x layer: table, stacked bars (the paper's figure),
    summary.csv and the tidy units.csv."""
    input:
        results=all_results(),
        summaries=[f"{d}/summary.json" for d in all_layer_dirs()],
        reports=all_layer_reports(),
        sweeps=experiment_sweeps("rotation") + experiment_sweeps("snapshots"),
    output:
        index="results/report/index.html",
        unique_by_category=report(
            "results/report/unique_by_category.svg",
            caption="../report/unique_by_category.rst",
            category="Summary",
            labels={"figure": "unique detectors (by category, the paper's)"},
        ),
        unique_top=report(
            "results/report/unique_top.svg",
            caption="../report/unique_top.rst",
            category="Summary",
            labels={"figure": "unique detectors (top label)"},
        ),
        summary=report(
            "results/report/summary.csv",
            caption="../report/summary_csv.rst",
            category="Summary",
            labels={"figure": "table: one row per model and layer"},
        ),
        units=report(
            "results/report/units.csv",
            caption="../report/units_csv.rst",
            category="Summary",
            labels={"figure": "table: one row per unit and category"},
        ),
    log:
        "logs/report_all.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    params:
        layer_dirs=all_layer_dirs(),
        sweeps=lambda wc, input: (
            f"--sweeps {' '.join(os.path.dirname(p) for p in input.sweeps)}" if input.sweeps else ""
        ),
    shell:
        "netdissect report-all --layer-dirs {params.layer_dirs} {params.sweeps} --out results/report > {log} 2>&1"
