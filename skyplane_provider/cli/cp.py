"""``skyplane-provider cp`` and ``sync``: move objects through a gateway fleet."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from gateway.stores.uri import StoreURI, parse_uri
from skyplane_provider.errors import BadInputError, BadOptionError
from skyplane_provider.provisioners import REGISTRY
from skyplane_provider.transfer import Transfer, TransferRequest
from skyplane_provider.transfer.estimate import unpriced_regions
from skyplane_provider.transfer.request import SERVER_SIDE_MODES, SOLVERS, parse_rate, parse_size
from skyplane_provider.transfer.stats import SKIP_REASONS

from .progress import progress_printer
from .wording import UsageError, examples, plural, usd

CP_EXAMPLES = examples(
    "skyplane-provider cp -r s3://raw/events/ gs://lake/events/",
    "skyplane-provider cp s3://raw/events/a.json /tmp/a.json                 # one object",
    "skyplane-provider cp -r s3://raw/events/ gs://lake/events/ az://devstoreaccount1/lake/events/ \\",
    "    --dst-region az://devstoreaccount1/lake=azure:westeurope --solver ilp --json",
    "skyplane-provider cp -r s3://raw/events/ gs://lake/events/ --provisioner ssh \\",
    "    --provisioner-settings ssh.json --credentials creds.json           # gateways on your hosts",
)
SYNC_EXAMPLES = examples(
    "skyplane-provider sync s3://raw/events/ gs://lake/events/",
    "skyplane-provider sync s3://raw/events/ gs://lake/events/ --delete --max-delete 100 --dry-run   # a mirror",
    "skyplane-provider sync s3://raw/ gs://lake/ --include '/2024/**' --exclude '*.tmp' --max-age 7d --max-cost-usd 5",
    "skyplane-provider sync /data/events/ s3://raw/events/ --gateways-per-region 2",
    "skyplane-provider sync s3://raw/events/ gs://lake/events/ --state-uri gs://lake/skyplane-state  # resume anywhere",
)
#: Cloud of a region tag -> URI scheme of its stores.
_SCHEME_OF = {"aws": "s3", "gcp": "gs", "azure": "az"}


def _size(text: str) -> int:
    # argparse turns only ValueError/ArgumentTypeError into a usage error; anything else is a traceback.
    try:
        return parse_size(text)
    except BadOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> int | None:
    try:
        return parse_rate(text)
    except BadOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    for name, help_text, epilog in (
            ("cp", "copy objects to one or more destinations", CP_EXAMPLES),
            ("sync", "copy only objects missing or different at the destinations (always recursive)", SYNC_EXAMPLES)):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog)
        p.add_argument("src", help="source URI: s3://bucket/prefix, gs://bucket/prefix, az://account/container/prefix, "
                                   "or an absolute path")
        p.add_argument("dst", nargs="+", help="one or more destination URIs (one fleet multicasts to all)")
        add_transfer_options(p, recursive=name == "cp")
        add_selection_options(p)
        add_state_option(p)
        p.set_defaults(func=run_sync if name == "sync" else run_cp)


def add_transfer_options(p: argparse.ArgumentParser, *, recursive: bool = True) -> None:
    """The options every command that moves data shares (cp, sync, publish); ``-r`` only where it
    changes something (sync and publish always copy a whole prefix)."""
    if recursive:
        p.add_argument("-r", "--recursive", action="store_true", help="copy every object under the source prefix")
    p.add_argument("--json", action="store_true", help="print the stats as JSON on the last line of stdout")
    p.add_argument("--credentials", type=argparse.FileType("r"), metavar="FILE",
                   help="JSON credentials document for the stores (keys: s3, gs, az or a store root URI; "
                        "see docs/provisioners.md, \"Store credentials\"). Gateways on other hosts (ssh, aws, gcp, azure) "
                        "get only this, never this machine's environment (default: the SDKs' environment, "
                        "local gateways only)")
    p.add_argument("--no-compress", action="store_true", help="do not lz4-compress chunks")
    p.add_argument("--no-encrypt", action="store_true", help="do not encrypt chunks end to end")
    p.add_argument("--solver", choices=SOLVERS, default="direct", help="route planner")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--throughput-gbps", type=float, metavar="GBPS",
                        help="throughput target in Gbit/s: the planner picks the cheapest route reaching it")
    target.add_argument("--max-cost-per-gb", type=float, metavar="USD",
                        help="egress cost ceiling in USD/GB: the planner picks the fastest route under it")
    p.add_argument("--max-gateways-per-region", type=int, default=1, metavar="N",
                   help="upper bound of gateways per region the planner may use")
    p.add_argument("--gateways-per-region", type=int, metavar="N",
                   help="fixed number of gateways in every region; spares survive a dead gateway "
                        "(default: what the planner picks)")
    p.add_argument("--connections", type=int, metavar="N",
                   help="TCP connections per gateway and next hop (default: what the planner picks; "
                        "8 on a direct plan)")
    p.add_argument("--bwlimit", type=_rate, metavar="RATE",
                   help="bandwidth cap per region, e.g. 200MiB/s (binary units, bytes per second): the "
                        "gateways of each region together send at most this (default: no cap)")
    p.add_argument("--server-side", choices=SERVER_SIDE_MODES, default="auto",
                   help="let destination stores that can copy from the source (S3 to S3, GCS to GCS, Azure "
                        "to Azure; probed first) do so with no gateway: where cheaper at the requested speed "
                        "(auto), always (fail if one cannot), or never (docs/server-side-copy.md)")
    p.add_argument("--chunk-size", type=_size, default="32MiB", metavar="SIZE", help="part size, e.g. 16MiB")
    p.add_argument("--src-region", metavar="TAG",
                   help="region tag of the source, e.g. aws:us-east-1 (default: asked from the store)")
    p.add_argument("--dst-region", action="append", metavar="[URI=]TAG",
                   help="region of a destination; repeat for each. URI=TAG names the destination "
                        "(az://acct/cont=azure:westeurope), a bare TAG goes to the only destination of its "
                        "cloud, or give one TAG per destination in order ('' = ask the store). Azure does "
                        "not report regions: name them (default: asked from each store)")
    p.add_argument("--provisioner", choices=sorted(REGISTRY), default="local",
                   help="where the gateways run: processes here, your ssh hosts, or VMs on EC2, Compute Engine or Azure")
    p.add_argument("--provisioner-settings", type=argparse.FileType("r"), metavar="FILE",
                   help="JSON object of provisioner settings (ssh hosts, aws region/instance type...), "
                        "see docs/provisioners.md")
    p.add_argument("--grid", metavar="CSV", help="CSV grid (src,dst,gbps,cost_per_gb[,capacity: vm|link]) to "
                                                 "plan on instead of the built-in one")
    p.add_argument("--plan", type=argparse.FileType("r"), metavar="FILE",
                   help="a saved plan (JSON, e.g. from `skyplane-provider plan --json`) to use as is")


def add_selection_options(p: argparse.ArgumentParser) -> None:
    """What cp and sync take (rclone's filters), what they may cost, and the mirror's deletions."""
    g = p.add_argument_group("what is taken (rclone's filters, applied while listing; names are relative to the "
                             "source prefix, a leading / anchors a glob there)")
    g.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="take only names matching GLOB (repeatable; *, **, ?, [a-z], {a,b})")
    g.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave out names matching GLOB "
                   "(repeatable; includes are tried first, as in rclone)")
    g.add_argument("--filter", action="append", default=[], metavar="RULE",
                   help="'+ GLOB' or '- GLOB', tried in the order given after the includes and excludes")
    g.add_argument("--min-size", metavar="SIZE", help="leave out objects smaller than SIZE (e.g. 100KiB)")
    g.add_argument("--max-size", metavar="SIZE", help="leave out objects larger than SIZE (e.g. 1GiB)")
    g.add_argument("--min-age", metavar="AGE", help="leave out objects modified less than AGE ago "
                                                     "(90s, 2h, 7d, 1M, or a date 2024-05-01)")
    g.add_argument("--max-age", metavar="AGE", help="leave out objects modified more than AGE ago")
    g = p.add_argument_group("before paying, and mirroring")
    g.add_argument("--dry-run", action="store_true", help="list, diff, plan and price the job, print every object it "
                                                          "would copy (and delete), move nothing, start no gateway")
    g.add_argument("--max-cost-usd", type=float, metavar="USD",
                   help="refuse the job, before any gateway starts, when its predicted cost (egress + VMs + store "
                        "requests) is over USD")
    g.add_argument("--delete", action="store_true", help="sync only: delete destination objects the source no "
                                                         "longer has, once every copy is verified")
    g.add_argument("--max-delete", type=int, metavar="N",
                   help="with --delete: refuse a run that would delete more than N objects (deleting nothing)")


def add_state_option(p: argparse.ArgumentParser) -> None:
    """``--state-uri``: where the job's manifest is kept off this host (cp, sync and resume)."""
    p.add_argument("--state-uri", metavar="URI",
                   help="keep a copy of the job's manifest (what is done) at URI/JOB/manifest.sqlite3, e.g. "
                        "s3://bucket/skyplane-state (any store URI; its bucket must exist): written every few "
                        "seconds and when the job fails, deleted when it succeeds, so `skyplane-provider resume "
                        "JOB --state-uri URI` continues the job on another host (default: this host only)")


def request_from_args(args: argparse.Namespace, *, sync: bool, dsts: list[str] | None = None) -> TransferRequest:
    dsts = dsts if dsts is not None else args.dst
    return TransferRequest(
        src=args.src, dsts=dsts, recursive=getattr(args, "recursive", False) or sync, sync=sync,
        provisioner=args.provisioner, provisioner_settings=json_object(args.provisioner_settings,
                                                                       "--provisioner-settings"),
        credentials=json_object(args.credentials, "--credentials"), solver=args.solver,
        throughput_gbps=args.throughput_gbps, max_cost_per_gb=args.max_cost_per_gb,
        max_gateways_per_region=args.max_gateways_per_region, gateways_per_region=args.gateways_per_region,
        connections=args.connections, compress=not args.no_compress, encrypt=not args.no_encrypt,
        chunk_size=args.chunk_size, bwlimit=args.bwlimit, server_side=args.server_side,
        src_region=args.src_region,
        dst_regions=dst_regions(args.dst_region, dsts),
        grid=args.grid, plan=json.load(args.plan) if args.plan else None,
        state_uri=getattr(args, "state_uri", None),  # publish has no --state-uri
        job_id=getattr(args, "job_id", None),  # the id main() started the coordinator's process under
        **{name: getattr(args, name) for name in _SELECTION if getattr(args, name, None) is not None})


#: The options of :func:`add_selection_options`, named as in :class:`TransferRequest`.
_SELECTION = ("include", "exclude", "filter", "min_size", "max_size", "min_age", "max_age", "dry_run",
              "max_cost_usd", "delete", "max_delete")


def json_object(file: TextIO | None, option: str) -> dict[str, Any]:
    """The JSON object in ``file`` (``{}`` without one); a clear error for anything else."""
    if file is None:
        return {}
    with file:
        try:
            value = json.load(file)
        except json.JSONDecodeError as exc:
            raise BadOptionError(f"{option} {file.name} is not valid JSON: {exc}",
                                 hint="write a JSON object, e.g. {\"hosts\": [\"user@host\"]}") from exc
    if not isinstance(value, dict):
        raise BadOptionError(f"{option} {file.name} must hold a JSON object, not {type(value).__name__}",
                             hint="write a JSON object of names to values")
    return value


def dst_regions(values: list[str] | None, dsts: list[str]) -> list[str | None] | None:
    """The region of each destination from the ``--dst-region`` values (see its help), None where the
    store is asked. Raises :class:`UsageError` when a value fits no destination or several."""
    if not values:
        return None
    if len(values) == len(dsts) and not any("=" in v for v in values):
        return [v or None for v in values]  # one per destination, in order
    parsed = [_uri(d) for d in dsts]
    regions: dict[int, str | None] = {}
    bare = []
    for value in values:
        name, sep, tag = value.rpartition("=")
        if not sep:
            bare.append(value)
            continue
        named = _uri(name)
        hits = [i for i, d in enumerate(parsed) if _inside(d, named)]
        if not hits:
            raise UsageError(f"--dst-region {value}: {name} is none of the destinations",
                             hint="name a destination (or its bucket / container) before the '='")
        regions.update((i, tag or None) for i in hits)
    for tag in bare:
        scheme = _SCHEME_OF.get(tag.partition(":")[0])
        hits = [i for i, d in enumerate(parsed) if d.scheme == scheme and i not in regions]
        if len(hits) != 1:
            what = "no destination" if not hits else f"{len(hits)} destinations"
            raise UsageError(f"--dst-region {tag}: {what} without a region {'is' if not hits else 'are'} on its cloud",
                             hint="say which destination: --dst-region URI=TAG, e.g. "
                                  "--dst-region az://account/container=azure:westeurope")
        regions[hits[0]] = tag
    return [regions.get(i) for i in range(len(dsts))]


def _uri(text: str) -> StoreURI:
    try:
        return parse_uri(text)
    except BadInputError as exc:
        raise UsageError(str(exc)) from None


def _inside(dst: StoreURI, named: StoreURI) -> bool:
    """Whether ``named`` is ``dst`` itself, its store or a prefix of it."""
    if (dst.scheme, dst.bucket) != (named.scheme, named.bucket):
        return False
    return not named.path or dst.path == named.path or dst.path.startswith(named.path.rstrip("/") + "/")


def execute(req: TransferRequest, args: argparse.Namespace) -> int:
    """Run a request with a progress bar (terminal) and print the stats (a dry run: what it would do)."""
    if req.dry_run:
        dry = Transfer(req).dry_run()
        if args.json:
            print(json.dumps(dry.to_dict(), sort_keys=True))
        else:
            print("\n".join(dry.lines()))
        return 0
    with progress_printer(enabled=not args.json) as show:
        transfer = Transfer(req, progress=show)
        transfer.prepare()
        stats = transfer.run()
    if args.json:
        print(json.dumps(stats.to_dict(), sort_keys=True))
    else:
        d = stats.to_dict()
        deleted = f", {plural(d['deleted_objects'], 'object')} deleted" if req.delete else ""
        unpriced = unpriced_regions(d["plan"], req.grid)
        print(f"moved {plural(d['objects'], 'object')}, {plural(d['bytes'], 'byte')} in {d['seconds']:.2f}s "
              f"({d['gbps']:.3f} Gbps; {d['move_gbps']:.3f} Gbps while moving), {d['skipped_objects']} already "
              f"up to date{deleted}; verified: {d['verified']}; retries: {d['retries']}; "
              f"predicted cost {usd(d['cost_usd'], unpriced)}")
        hops = [f"{e['src']} -> {e['dst']}" for e in d["route"]]
        hops += [f"{d['plan']['src']} => {r} (written by the source's gateways: one host, no hop)"
                 for r in d["plan"].get("written_at_source", ())]
        print(f"route ({d['plan']['solver']}): " + ", ".join(hops) if hops else f"route: within {d['plan']['src']}")
        for reason, frames in d["work_skipped"].items():
            print(f"{SKIP_REASONS.get(reason, reason)}: {plural(frames, 'chunk')}")
    return 0


def run_cp(args: argparse.Namespace) -> int:
    return execute(request_from_args(args, sync=False), args)


def run_sync(args: argparse.Namespace) -> int:
    return execute(request_from_args(args, sync=True), args)
