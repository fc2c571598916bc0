# Network Dissection as a workflow of file targets (see README "Workflow" and docs/interfaces.md).
#   snakemake --cores 8 report_all                      # the embedded default: offline, synthetic data
#   snakemake --cores 8 report_all --configfile config/examples/released_broden.yaml
#   snakemake report_all --profile profiles/slurm   # as SLURM jobs
# Rules only call `netdissect <command>`; every computation lives in the netdissect package.

from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.0")


# The default config lives beside this file, whatever the working directory (--directory).
configfile: Path(workflow.basedir, "config", "config.yaml")


validate(config, "config/schema.yaml")


# Snakemake's own report (`snakemake --report report.zip`): this text, then the outputs marked report().
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/broden.smk"
include: "rules/models.smk"
include: "rules/dissect.smk"
include: "rules/report.smk"
include: "rules/sources.smk"


localrules:
    all,
    report_all,
    results,
    checks,


rule all:
    """Everything: result.csv, summary and report of every model x layer, and the cross-run report."""
    default_target: True
    input:
        "results/report/index.html",


rule report_all:
    """The cross-run report results/report/index.html, and every per-layer report it links to."""
    input:
        "results/report/index.html",


rule results:
    """Only the numbers: result.csv and summary.json of every model x layer (no HTML)."""
    input:
        all_results(),


rule checks:
    """Only the cheap checks: every model loads and has its layers."""
    input:
        all_layer_checks(),
