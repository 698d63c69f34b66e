"""``skyplane-provider cp`` and ``sync``: move objects through a gateway fleet."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from skyplane_provider.errors import BadOptionError

from skyplane_provider.transfer import Transfer, TransferRequest
from skyplane_provider.transfer.request import SOLVERS, parse_size

from .progress import progress_printer


def _size(text: str) -> int:
    # argparse turns only ValueError/ArgumentTypeError into a usage error; anything else is a traceback.
    try:
        return parse_size(text)
    except BadOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    for name, help_text in (("cp", "copy objects to one or more destinations"),
                            ("sync", "copy only objects missing or different at the destinations")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("src", help="source URI: s3://bucket/prefix, gs://, az://account/container/prefix, or a path")
        p.add_argument("dst", nargs="+", help="one or more destination URIs")
        add_transfer_options(p)
        p.set_defaults(func=run_sync if name == "sync" else run_cp)


def add_transfer_options(p: argparse.ArgumentParser) -> None:
    """The options every command that moves data shares (cp, sync, publish)."""
    p.add_argument("-r", "--recursive", action="store_true", help="copy every object under the source prefix")
    p.add_argument("--json", action="store_true", help="print the stats as JSON on the last line of stdout")
    p.add_argument("--no-compress", action="store_true", help="do not lz4-compress chunks")
    p.add_argument("--no-encrypt", action="store_true", help="do not encrypt chunks end to end")
    p.add_argument("--solver", choices=SOLVERS, default="direct", help="route planner (default: direct)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--throughput-gbps", type=float, help="throughput target for the planner")
    target.add_argument("--max-cost-per-gb", type=float, help="egress cost ceiling in USD/GB")
    p.add_argument("--max-gateways-per-region", type=int, default=1, help="upper bound the planner may use")
    p.add_argument("--gateways-per-region", type=int, help="fixed number of gateways in every region")
    p.add_argument("--connections", type=int, help="TCP connections per gateway and next hop")
    p.add_argument("--chunk-size", type=_size, default="32MiB", help="part size, e.g. 16MiB (default 32MiB)")
    p.add_argument("--src-region", help="region tag of the source, e.g. aws:us-east-1 (default: asked from the store)")
    p.add_argument("--dst-region", action="append", help="region tag per destination, in order")
    p.add_argument("--provisioner", default="local", help="local (default), ssh or aws")
    p.add_argument("--provisioner-settings", type=argparse.FileType("r"), metavar="FILE",
                   help="JSON object of provisioner settings (ssh hosts, aws region/instance type...), "
                        "see docs/provisioners.md")
    p.add_argument("--grid", help="CSV grid (src,dst,gbps,cost_per_gb[,capacity: vm|link]) to plan on "
                                  "instead of the built-in one")
    p.add_argument("--plan", type=argparse.FileType("r"), help="a saved plan (JSON) to use as is")


def request_from_args(args: argparse.Namespace, *, sync: bool, dsts: list[str] | None = None) -> TransferRequest:
    return TransferRequest(
        src=args.src, dsts=dsts if dsts is not None else args.dst, recursive=args.recursive or sync, sync=sync,
        provisioner=args.provisioner, provisioner_settings=_settings(args.provisioner_settings), solver=args.solver, throughput_gbps=args.throughput_gbps,
        max_cost_per_gb=args.max_cost_per_gb, max_gateways_per_region=args.max_gateways_per_region,
        gateways_per_region=args.gateways_per_region, connections=args.connections,
        compress=not args.no_compress, encrypt=not args.no_encrypt, chunk_size=args.chunk_size,
        src_region=args.src_region, dst_regions=args.dst_region, grid=args.grid,
        plan=json.load(args.plan) if args.plan else None)


def _settings(file: TextIO | None) -> dict[str, Any]:
    if file is None:
        return {}
    try:
        settings = json.load(file)
    except json.JSONDecodeError as exc:
        raise BadOptionError(f"--provisioner-settings {file.name} is not valid JSON: {exc}",
                             hint="write a JSON object, e.g. {\"hosts\": [\"user@host\"]}") from exc
    if not isinstance(settings, dict):
        raise BadOptionError(f"--provisioner-settings {file.name} must hold a JSON object, not {type(settings).__name__}",
                             hint="write a JSON object of setting names to values")
    return settings


def execute(req: TransferRequest, args: argparse.Namespace) -> int:
    """Run a request with a progress bar (terminal) and print the stats."""
    with progress_printer(enabled=not args.json) as show:
        transfer = Transfer(req, progress=show)
        transfer.prepare()
        stats = transfer.run()
    if args.json:
        print(json.dumps(stats.to_dict(), sort_keys=True))
    else:
        d = stats.to_dict()
        print(f"moved {d['objects']} objects, {d['bytes']} bytes in {d['seconds']:.2f}s "
              f"({d['gbps']:.3f} Gbps; {d['move_gbps']:.3f} Gbps while moving), {d['skipped_objects']} already up to date; verified: {d['verified']}; "
              f"retries: {d['retries']}; predicted cost ${d['cost_usd']:.4f}")
        print(f"route ({d['plan']['solver']}): " + ", ".join(f"{e['src']} -> {e['dst']}" for e in d["route"])
              if d["route"] else f"route: within {d['plan']['src']}")
    return 0


def run_cp(args: argparse.Namespace) -> int:
    return execute(request_from_args(args, sync=False), args)


def run_sync(args: argparse.Namespace) -> int:
    return execute(request_from_args(args, sync=True), args)

