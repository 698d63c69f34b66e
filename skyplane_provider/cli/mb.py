"""``skyplane-provider mb``: make a bucket or container (transfers never create one)."""

from __future__ import annotations

import argparse

from skyplane_provider.buckets import make_bucket

from .cp import json_object
from .wording import examples

EXAMPLES = examples(
    "skyplane-provider mb s3://raw gs://lake az://devstoreaccount1/lake     # on the emulators (Azurite's account)",
    "skyplane-provider mb s3://raw-eu --region aws:eu-west-1",
    "skyplane-provider mb gs://lake --credentials creds.json",
)


def register(sub: argparse._SubParsersAction) -> None:
    help_text = "make buckets (s3://, gs://) or containers (az://account/container)"
    p = sub.add_parser("mb", help=help_text, description=help_text + ". Transfers never create one.",
                       epilog=EXAMPLES)
    p.add_argument("uri", nargs="+", help="bucket or container root URI")
    p.add_argument("--region", metavar="TAG",
                   help="region tag, e.g. aws:eu-west-1 or gcp:europe-west1 (default: S3 the client's "
                        "region, GCS its default multi-region; Azure containers take their account's)")
    p.add_argument("--credentials", type=argparse.FileType("r"), metavar="FILE",
                   help="JSON credentials document (as for cp) (default: the SDKs' environment)")
    p.add_argument("--exist-ok", action="store_true", help="a bucket that exists already is not an error")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.errors import ConflictError

    credentials = json_object(args.credentials, "--credentials")
    for uri in args.uri:
        try:
            print(f"made {make_bucket(uri, region=args.region, credentials=credentials)}")
        except ConflictError:
            if not args.exist_ok:
                raise
            print(f"{uri} exists already")
    return 0
