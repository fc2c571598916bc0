"""`netdissect <command>`: one subcommand per stage, plus `dissect` (all stages in one process).

Each family of commands lives beside its code and registers itself here. Registration modules stay
light: heavy imports (torch, pandas) happen inside the command handlers, so `netdissect --help` is fast.
A handler takes the parsed arguments and returns an exit status.
"""

from __future__ import annotations

import argparse
import sys

from netdissect import __version__
from netdissect.errors import NetDissectError
from netdissect.io import NO_SPACE


def build_parser() -> argparse.ArgumentParser:
    from netdissect import engine_cli, fetch
    from netdissect.broden import cli as broden_cli
    from netdissect.broden.sources import cli as sources_cli
    from netdissect.demo import cli as demo_cli
    from netdissect.experiments import cli as experiments_cli
    from netdissect.models import cli as models_cli
    from netdissect.report import cli as report_cli

    parser = argparse.ArgumentParser(prog="netdissect", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"netdissect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    broden = sub.add_parser("broden", help="check or regenerate a Broden-format dataset")
    broden_sub = broden.add_subparsers(dest="broden_command", required=True, metavar="COMMAND")

    broden_cli.register(sub, broden_sub)  # synth, broden check, broden pack-labels
    sources_cli.register(sub, broden_sub)  # broden regenerate
    fetch.register(sub)  # fetch
    models_cli.register(sub)  # layers, random-weights
    engine_cli.register(sub)  # extract, quantile, tally, merge, score, dissect
    demo_cli.register(sub)  # train-demo
    report_cli.register(sub)  # report, report-all
    experiments_cli.register(sub)  # significance, sweep
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NetDissectError as err:
        print(f"netdissect {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk where no writer named the file (the writers of netdissect.io do)
        if err.errno not in NO_SPACE:
            raise
        where = f" while writing {err.filename}" if err.filename else ""
        print(
            f"netdissect {args.command}: error: no space left on the device{where} ({err.strerror}); "
            f"free some space and run the same command again",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
