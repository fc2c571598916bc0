"""The demo network of the default workflow (:mod:`~netdissect.demo.net`), its training
(:mod:`~netdissect.demo.train`) and the ``train-demo`` command (:mod:`~netdissect.demo.cli`).
The model SPEC ``netdissect.demo:DemoNet`` names the network."""

from netdissect.demo.net import DEMO_SPEC, DemoNet

__all__ = ["DEMO_SPEC", "DemoNet"]
