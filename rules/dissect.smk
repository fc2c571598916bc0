# The dissection of one (dataset, model): extract per shard -> thresholds per layer -> tally per
# (layer, shard) -> merge -> score. File names: docs/interfaces.md.


rule extract:
    """One forward pass over shard k for ALL layers of the model: activations, imgmax, quantile candidates."""
    input:
        index=dataset_index,
        spec=spec_input,
        weights=weights_input,
        mean_file=mean_file_input,
        layers=ancient(layers_ok),
    output:
        directory("results/shards/{dataset}/{model}/{k}"),
    log:
        "logs/{dataset}/{model}/extract.{k}.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("extract", "threads")
    resources:
        mem_mb=res("extract", "mem_mb"),
        runtime=res("extract", "runtime"),
        gpu=res("extract", "gpu"),
    params:
        dataset=dataset_option,
        spec=spec_option,
        weights=weights_option,
        layers=layers_option,
        norm=normalisation_options,
        tokens=tokens_option,
        shards=DISSECT["shards"],
        batch_size=DISSECT["batch_size"],
        workers=DISSECT["workers"],
        device=DISSECT["device"],
        dtype=DISSECT["dtype"],
        conventions=convention_options("quantile"),
        activations=activations_option(),
    shell:
        "netdissect extract --dataset {params.dataset} --model {params.spec} {params.weights}"
        " --layers {params.layers:q} --shard {wildcards.k} --shards {params.shards} --out {output}"
        " --batch-size {params.batch_size} --workers {params.workers} --device {params.device}"
        " --dtype {params.dtype} {params.conventions} {params.norm} {params.tokens} {params.activations}"
        " --no-progress > {log} 2>&1"


rule quantile:
    """Each unit's exact threshold, merged from every shard's candidates (or read from a file)."""
    input:
        shards=all_shard_dirs,
        thresholds_file=thresholds_input,
    output:
        thresholds="results/layers/{dataset}/{model}/{layer}/thresholds.npy",
        source="results/layers/{dataset}/{model}/{layer}/thresholds.json",
    log:
        "logs/{dataset}/{model}/{layer}/quantile.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("quantile", "threads")
    resources:
        mem_mb=res("quantile", "mem_mb"),
        runtime=res("quantile", "runtime"),
    params:
        out=lambda wc: layer_dir(wc.dataset, wc.model, layer_name(wc)),
        layer=layer_name,
        level=quantile_option,
    shell:
        "netdissect quantile --shards {input.shards} --layer {params.layer:q} {params.level}"
        " --out {params.out} > {log} 2>&1"


rule tally:
    """Counts (label areas, intersections, category activations) of shard k under the thresholds."""
    input:
        index=dataset_index,
        shard="results/shards/{dataset}/{model}/{k}",
        thresholds="results/layers/{dataset}/{model}/{layer}/thresholds.npy",
        source="results/layers/{dataset}/{model}/{layer}/thresholds.json",
        labels=labels_dir,
        weights=recompute_weights,
    output:
        "results/layers/{dataset}/{model}/{layer}/tally/{k}.npz",
    log:
        "logs/{dataset}/{model}/{layer}/tally.{k}.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("tally", "threads")
    resources:
        mem_mb=res("tally", "mem_mb"),
        runtime=res("tally", "runtime"),
        gpu=res("tally", "gpu"),
    params:
        dataset=dataset_option,
        layer=layer_name,
        conventions=convention_options("union", "upsample"),
        categories=categories_option(),
        device=DISSECT["device"],
        batch_size=DISSECT["batch_size"],
        parallel=tally_parallel,
    shell:
        "netdissect tally --dataset {params.dataset} --shard {input.shard} --layer {params.layer:q}"
        " --thresholds {input.thresholds} --labels {input.labels} --out {output}"
        " {params.conventions} {params.categories}"
        " --device {params.device} --batch-size {params.batch_size} {params.parallel} --no-progress"
        " > {log} 2>&1"


rule merge:
    """Counts of the whole dataset: the shards' counts added up (exact integers)."""
    input:
        tallies=lambda wc: expand("results/layers/{dataset}/{model}/{layer}/tally/{k}.npz", k=SHARDS, **wc),
    output:
        "results/layers/{dataset}/{model}/{layer}/counts.npz",
    log:
        "logs/{dataset}/{model}/{layer}/merge.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("light", "threads")
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    shell:
        "netdissect merge --inputs {input.tallies} --out {output} > {log} 2>&1"


rule score:
    """IoU of every unit with every label; the unit's label, detectors, unique detectors."""
    input:
        index=dataset_index,
        counts="results/layers/{dataset}/{model}/{layer}/counts.npz",
        significance=significance_input,
    output:
        result="results/layers/{dataset}/{model}/{layer}/result.csv",
        summary="results/layers/{dataset}/{model}/{layer}/summary.json",
    log:
        "logs/{dataset}/{model}/{layer}/score.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("light", "threads")
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    params:
        dataset=dataset_option,
        out=lambda wc: layer_dir(wc.dataset, wc.model, layer_name(wc)),
        iou=DISSECT["iou_threshold"],
        significance=significance_option,
        shards=all_shard_dirs,
    shell:
        "netdissect score --counts {input.counts} --dataset {params.dataset} --out {params.out}"
        " --iou-threshold {params.iou} --shards {params.shards} {params.significance} > {log} 2>&1"
