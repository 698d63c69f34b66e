"""``skyplane-provider datasets``: what the replica catalogue holds."""

from __future__ import annotations

import argparse
import json

from skyplane_provider.broker import Catalogue

from .wording import examples, plural

EXAMPLES = examples(
    "skyplane-provider datasets                                   # every dataset and its replicas",
    "skyplane-provider datasets ref --json",
    "skyplane-provider datasets --set-default-region gcp:us-central1",
)


def register(sub: argparse._SubParsersAction) -> None:
    help_text = "list published datasets and their replicas"
    p = sub.add_parser("datasets", help=help_text, description=help_text, epilog=EXAMPLES)
    p.add_argument("name", nargs="?", help="show only this dataset")
    p.add_argument("--catalogue", help="catalogue location (default: $SKYPLANE_CATALOGUE, else "
                                       "$SKYPLANE_HOME/catalogue.json)")
    p.add_argument("--json", action="store_true", help="print the catalogue (or the dataset) as JSON")
    p.add_argument("--set-default-region", metavar="TAG",
                   help="record the region sky:// readers are priced from when they give none")
    p.set_defaults(func=run_datasets)


def run_datasets(args: argparse.Namespace) -> int:
    catalogue = Catalogue(args.catalogue)
    if args.set_default_region:
        catalogue.set_default_region(args.set_default_region)
    state = catalogue.read()
    datasets = [state.dataset(args.name)] if args.name else [state.datasets[n] for n in sorted(state.datasets)]
    if args.json:
        doc = state.to_dict()
        doc["datasets"] = {d.name: d.to_dict() for d in datasets}
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"catalogue: {catalogue.location} (default region: {state.default_region or 'none'})")
    if not datasets:
        print("no datasets; publish one with: skyplane-provider publish SRC --dataset NAME --to DST")
    for d in datasets:
        readable = len(d.readable())
        print(f"{d.name}: {readable} of {plural(len(d.replicas), 'replica')} readable, updated {d.updated_at}")
        for r in d.replicas:
            print(f"  {r.state:8} {r.region:24} {plural(r.objects, 'object'):>15} {plural(r.bytes, 'byte'):>20}  {r.uri}"
                  f"{'  (origin)' if r.origin else ''}")
    return 0
