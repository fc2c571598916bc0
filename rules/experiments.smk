# The paper's experiments and the significance test (docs/experiments.md): a permutation test per layer,
# a layer dissected in rotated bases (rotation_all) and at training snapshots (snapshots_all). Each point
# of a sweep is one `netdissect dissect` (all stages in one process: one job instead of a dozen).


rule significance:
    """Permutation test of every unit's score: p-values and null percentiles (read by rule score)."""
    input:
        index=dataset_index,
        counts="results/layers/{dataset}/{model}/{layer}/counts.npz",
        shards=all_shard_dirs,
        labels=labels_dir,
    output:
        csv="results/layers/{dataset}/{model}/{layer}/significance.csv",
        json="results/layers/{dataset}/{model}/{layer}/significance.json",
        null="results/layers/{dataset}/{model}/{layer}/null_scores.npy",
    log:
        "logs/{dataset}/{model}/{layer}/significance.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("significance", "threads")
    resources:
        mem_mb=res("significance", "mem_mb"),
        runtime=res("significance", "runtime"),
    params:
        dataset=dataset_option,
        layer_dir=lambda wc: layer_dir(wc.dataset, wc.model, layer_name(wc)),
        permutations=lambda wc: model_permutations(wc.model),
        seed=DISSECT["permutation_seed"],
        alpha=DISSECT["alpha"],
        batch_size=DISSECT["batch_size"],
    shell:
        "netdissect significance --layer-dir {params.layer_dir} --shards {input.shards} --dataset {params.dataset}"
        " --labels {input.labels} --permutations {params.permutations} --seed {params.seed} --alpha {params.alpha}"
        " --batch-size {params.batch_size} --no-progress > {log} 2>&1"


rule train_demo_snapshots:
    """The demo CNN trained as rule train_demo does, saving its weights at the configured steps too."""
    input:
        index=lambda wc: os.path.join(dataset_dir(weights_entry(wc)["dataset"]), "index.csv"),
        layers=ancient(layers_ok),
    output:
        weights="models/{model}.pt",
        snapshots=directory("models/{model}.snapshots"),
    log:
        "logs/models/{model}.train.log",
    wildcard_constraints:
        model=models_with("snapshots", source="train"),
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
        steps=lambda wc: ",".join(str(s) for s in snapshot_steps(wc.model)),
    shell:
        "netdissect train-demo --dataset {params.dataset} --out {output.weights} --epochs {params.epochs}"
        " --seed {params.seed} --snapshots {output.snapshots} --snapshot-steps {params.steps} > {log} 2>&1"


rule download_snapshot:
    """A snapshot's published weights, fetched and checked against the configured sha256."""
    output:
        "models/{model}.snapshots/step{step}.pth",
    log:
        "logs/models/{model}.snapshots/step{step}.fetch.log",
    wildcard_constraints:
        model=models_with("snapshots"),
    conda:
        "../envs/netdissect.yaml"
    threads: 1
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("dataset", "runtime"),
    params:
        url=lambda wc: snapshot_entry(wc.model, wc.step)["url"],
        sha256=lambda wc: (
            f"--sha256 {snapshot_entry(wc.model, wc.step)['sha256']}"
            if snapshot_entry(wc.model, wc.step).get("sha256")
            else ""
        ),
    shell:
        "netdissect fetch {params.url} --out {output} {params.sha256} --no-progress > {log} 2>&1"


rule dissect_rotated:
    """One point of a rotation sweep: the layer dissected with its units rotated by R(power)."""
    input:
        index=dataset_index,
        spec=spec_input,
        weights=weights_input,
        mean_file=mean_file_input,
        labels=labels_dir,
        layers=ancient(layers_ok),
    output:
        directory("results/rotation/{dataset}/{model}/{layer}/p{power}"),
    log:
        "logs/{dataset}/{model}/{layer}/rotation.p{power}.log",
    wildcard_constraints:
        model=models_with("rotation"),
    conda:
        "../envs/netdissect.yaml"
    threads: res("experiment", "threads")
    resources:
        mem_mb=res("experiment", "mem_mb"),
        runtime=res("experiment", "runtime"),
        gpu=res("experiment", "gpu"),
    params:
        dissect=dissect_options,
        layer=layer_name,
        seed=lambda wc: model_entry(wc)["rotation"]["seed"],
    shell:
        "netdissect dissect {params.dissect} --layers {params.layer:q} --out {output} --threads {threads}"
        " --rotation-seed {params.seed} --rotation-power {wildcards.power} --labels {input.labels} > {log} 2>&1"


rule dissect_snapshot:
    """One point of a snapshot sweep: the layer of the weights saved at one training step."""
    input:
        index=dataset_index,
        spec=spec_input,
        weights=snapshot_input,
        mean_file=mean_file_input,
        labels=labels_dir,
        layers=ancient(layers_ok),
    output:
        directory("results/snapshots/{dataset}/{model}/{layer}/step{step}"),
    log:
        "logs/{dataset}/{model}/{layer}/snapshot.step{step}.log",
    wildcard_constraints:
        model=models_with("snapshots"),
    conda:
        "../envs/netdissect.yaml"
    threads: res("experiment", "threads")
    resources:
        mem_mb=res("experiment", "mem_mb"),
        runtime=res("experiment", "runtime"),
        gpu=res("experiment", "gpu"),
    params:
        dissect=lambda wc: dissect_options(wc, weights=snapshot_file(wc.model, wc.step)),
        layer=layer_name,
    shell:
        "netdissect dissect {params.dissect} --layers {params.layer:q} --out {output} --threads {threads}"
        " --labels {input.labels}"
        " > {log} 2>&1"


rule rotation_sweep:
    """Detectors and unique detectors per category against the rotation power: table and charts."""
    input:
        rotation_sweep_inputs,
    output:
        json="results/rotation/{dataset}/{model}/{layer}/sweep/sweep.json",
        csv="results/rotation/{dataset}/{model}/{layer}/sweep/sweep.csv",
    log:
        "logs/{dataset}/{model}/{layer}/rotation_sweep.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("light", "threads")
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    params:
        points=rotation_points_option,
        out=lambda wc: f"results/rotation/{wc.dataset}/{wc.model}/{wc.layer}/sweep",
        title=lambda wc: f"{wc.model} {layer_name(wc)}",
    shell:
        "netdissect sweep --axis power --points {params.points} --out {params.out}"
        " --title {params.title:q} > {log} 2>&1"


rule snapshot_sweep:
    """Detectors and unique detectors per category against the training step: table and charts."""
    input:
        snapshot_sweep_inputs,
    output:
        json="results/snapshots/{dataset}/{model}/{layer}/sweep/sweep.json",
        csv="results/snapshots/{dataset}/{model}/{layer}/sweep/sweep.csv",
    log:
        "logs/{dataset}/{model}/{layer}/snapshot_sweep.log",
    conda:
        "../envs/netdissect.yaml"
    threads: res("light", "threads")
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    params:
        points=snapshot_points_option,
        out=lambda wc: f"results/snapshots/{wc.dataset}/{wc.model}/{wc.layer}/sweep",
        title=lambda wc: f"{wc.model} {layer_name(wc)}",
    shell:
        "netdissect sweep --axis step --points {params.points} --out {params.out}"
        " --title {params.title:q} > {log} 2>&1"


rule rotation_all:
    """Every configured rotation sweep (models.<m>.rotation) of the runs."""
    input:
        experiment_sweeps("rotation"),


rule snapshots_all:
    """Every configured snapshot sweep (models.<m>.snapshots) of the runs."""
    input:
        experiment_sweeps("snapshots"),
