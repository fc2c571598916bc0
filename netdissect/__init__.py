"""netdissect: Network Dissection (Bau et al., CVPR 2017), fast and exact.

The package holds every computation as plain functions over files; the Snakemake workflow in the
repository root wires them into a DAG, and ``netdissect dissect`` runs the same stages in one process.
"""

__version__ = "0.1.0"
