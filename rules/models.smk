# Models: the check of every model's layers (first, cheap), and its weights file models/{model}.pt(h).


rule check_layers:
    """The SPEC loads and has every configured layer: fails first, before any long job, with the
    engine's message. Needs no weights, so it runs at the very start (after fetching a prototxt)."""
    input:
        spec=spec_input,
    output:
        "results/checks/{model}.layers.ok",
    log:
        "logs/checks/{model}.layers.log",
    priority: 100
    conda:
        "../envs/netdissect.yaml"
    threads: res("light", "threads")
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    params:
        spec=spec_option,
        layers=layers_option,
        upsample=upsample_check_option(),
    shell:
        "netdissect layers --model {params.spec} --check {params.layers:q} {params.upsample} > {output} 2> {log}"


rule train_demo:
    """The demo CNN (netdissect.demo:DemoNet) trained on a dataset of this config; deterministic."""
    input:
        index=lambda wc: os.path.join(dataset_dir(weights_entry(wc)["dataset"]), "index.csv"),
        layers=ancient(layers_ok),
    output:
        "models/{model}.pt",
    log:
        "logs/models/{model}.train.log",
    wildcard_constraints:
        model=models_with_weights("train"),
    conda:
        "../envs/netdissect.yaml"
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu"),
    params:
        dataset=lambda wc: dataset_dir(weights_entry(wc)["dataset"]),
        epochs=lambda wc: weights_entry(wc)["epochs"],
        seed=lambda wc: weights_entry(wc)["seed"],
    shell:
        "netdissect train-demo --dataset {params.dataset} --out {output} --epochs {params.epochs}"
        " --seed {params.seed} > {log} 2>&1"


rule random_weights:
    """A seeded random initialisation of the model, written once, so every shard sees one network."""
    input:
        layers=ancient(layers_ok),
    output:
        "models/{model}.pt",
    log:
        "logs/models/{model}.random.log",
    wildcard_constraints:
        model=models_with_weights("random"),
    conda:
        "../envs/netdissect.yaml"
    threads: res("light", "threads")
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    params:
        spec=lambda wc: model_entry(wc)["spec"],
        seed=lambda wc: weights_entry(wc)["seed"],
    shell:
        "netdissect random-weights --model {params.spec} --seed {params.seed} --out {output} > {log} 2>&1"


rule download_spec:
    """A Caffe deploy.prototxt given by URL (`spec: http...prototxt`), fetched and checked against
    `spec_sha256` when given."""
    output:
        "models/{model}.prototxt",
    log:
        "logs/models/{model}.spec.log",
    wildcard_constraints:
        model=models_with_url_spec(),
    conda:
        "../envs/netdissect.yaml"
    threads: 1
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    params:
        url=lambda wc: model_entry(wc)["spec"],
        sha256=lambda wc: f"--sha256 {model_entry(wc)['spec_sha256']}" if model_entry(wc)["spec_sha256"] else "",
    shell:
        "netdissect fetch {params.url} --out {output} {params.sha256} --no-progress > {log} 2>&1"


rule download_weights:
    """Published weights (a state_dict .pth, or the .caffemodel of a Caffe model), fetched and checked
    against the configured sha256."""
    input:
        layers=ancient(layers_ok),
    output:
        "models/{model}.{ext}",
    log:
        "logs/models/{model}.{ext}.fetch.log",
    wildcard_constraints:
        model=models_with_weights("download"),
        ext="pth|caffemodel",
    conda:
        "../envs/netdissect.yaml"
    threads: 1
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("dataset", "runtime"),
    params:
        url=lambda wc: weights_entry(wc)["url"],
        sha256=lambda wc: f"--sha256 {weights_entry(wc)['sha256']}" if weights_entry(wc)["sha256"] else "",
    shell:
        "netdissect fetch {params.url} --out {output} {params.sha256} --no-progress > {log} 2>&1"
