# Reports: one HTML page per layer, and report_all: every model x layer side by side.


rule report_layer:
    """Per-layer report: headline, bar graph of detectors, top images of every unit."""
    input:
        index=dataset_index,
        result="results/layers/{dataset}/{model}/{layer}/result.csv",
        summary="results/layers/{dataset}/{model}/{layer}/summary.json",
        thresholds="results/layers/{dataset}/{model}/{layer}/thresholds.npy",
        shards=all_shard_dirs,
        weights=recompute_weights,
    output:
        "results/layers/{dataset}/{model}/{layer}/report/index.html",
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
        layer_dir=lambda wc: layer_dir(wc.dataset, wc.model, wc.layer),
        out=lambda wc: f"{layer_dir(wc.dataset, wc.model, wc.layer)}/report",
        topk=DISSECT["topk"],
    shell:
        "netdissect report --dataset {params.dataset} --layer-dir {params.layer_dir} --layer {wildcards.layer}"
        " --shards {input.shards} --out {params.out} --topk {params.topk} > {log} 2>&1"


rule report_summary:
    """Unique detectors per category for every model x layer: table and stacked bars (the paper's figure)."""
    input:
        results=all_results(),
        summaries=[f"{d}/summary.json" for d in all_layer_dirs()],
        reports=all_layer_reports(),
    output:
        "results/report/index.html",
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
    shell:
        "netdissect report-all --layer-dirs {params.layer_dirs} --out results/report > {log} 2>&1"
