"""``skyplane-provider publish``: copy a dataset to many clouds and record its replicas in the catalogue."""

from __future__ import annotations

import argparse
import json

from skyplane_provider.broker import Publication

from .cp import add_transfer_options, request_from_args
from .progress import progress_printer
from .wording import examples, plural

EXAMPLES = examples(
    "skyplane-provider publish s3://raw/ref/ --dataset ref --to gs://lake/ref/ --to az://devstoreaccount1/lake/ref/ \\",
    "    --dst-region az://devstoreaccount1/lake=azure:westeurope",
    "skyplane-provider datasets ref                                  # its replicas",
    "python -c \"import fsspec; print(fsspec.open('sky://ref/a.json', region='gcp:us-central1').open().read())\"",
)


def register(sub: argparse._SubParsersAction) -> None:
    help_text = "publish a dataset: one multicast sync to every destination, then record the verified replicas"
    p = sub.add_parser("publish", help=help_text, description=help_text + ". Read it back as sky://NAME/key.",
                       epilog=EXAMPLES)
    p.add_argument("src", help="the dataset's prefix or directory: s3://bucket/prefix/, gs://, az://, or a path")
    p.add_argument("--dataset", required=True, help="dataset name (the NAME of sky://NAME/key)")
    p.add_argument("--to", dest="to", action="append", required=True, metavar="DST",
                   help="a destination URI (repeat for each replica)")
    p.add_argument("--catalogue", help="catalogue location (default: $SKYPLANE_CATALOGUE, else "
                                       "$SKYPLANE_HOME/catalogue.json)")
    add_transfer_options(p, recursive=False)
    p.set_defaults(func=run_publish)


def run_publish(args: argparse.Namespace) -> int:
    req = request_from_args(args, sync=True, dsts=args.to)
    with progress_printer(enabled=not args.json) as show:
        result = Publication(req, args.dataset, catalogue=args.catalogue, progress=show).prepare().run()
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
        return 0
    s = result.stats
    print(f"published {result.dataset}: moved {plural(s.objects, 'object')} ({plural(s.bytes, 'byte')}), "
          f"{s.skipped_objects} already "
          f"up to date; route ({s.plan['solver']}): "
          + (", ".join(f"{e['src']} -> {e['dst']}" for e in s.route) or "none"))
    for r in result.replicas:
        print(f"  {r.state:8} {r.region:24} {r.uri}{'  (origin)' if r.origin else ''}")
    print(f"catalogue: {result.catalogue}")
    return 0
