"""What object stores charge per request, and the price of a count of requests.

A transfer pays its stores for every request besides egress and VMs: a LIST per page of a listing,
a GET per ranged read, a PUT per object written whole, and for an object written in parts one
request to begin, one per part and one to complete. Many small objects make requests the larger
share of a job's cost, so the dry run and ``max_cost_usd`` count them.

Prices in USD per 1,000 requests, standard (hot) storage class, list prices without free tiers:

- **aws** (S3 Standard, us-east-1): PUT, COPY, POST and LIST $0.005; GET and HEAD (and every other
  request) $0.0004; DELETE free. aws.amazon.com/s3/pricing, "Requests & data retrievals", as
  retrieved 2026-12.
- **gcp** (Cloud Storage Standard, regional buckets): Class A operations (object inserts, multipart
  uploads' initiate / part / complete, object listings) $0.005; Class B (object gets, metadata)
  $0.0004; deletes free. cloud.google.com/storage/pricing ("Operations") and its worked example on
  cloud.google.com/storage/pricing-examples (10,000 Class A = $0.05, 50,000 Class B = $0.02), as
  retrieved 2026-12.
- **azure** (Blob Storage, hot tier, LRS): write operations (Put Blob, Put Block, Put Block List)
  $0.055 per 10,000; read operations (Get Blob) $0.0044 per 10,000; List Blobs $0.055 per 10,000;
  all other operations (Get Blob Properties) $0.0044 per 10,000; Delete Blob free. The hot-tier
  figures of Microsoft Learn's "Estimate the cost of using AzCopy to transfer blobs" (Sample
  prices), which equal the hot LRS list prices on azure.microsoft.com/pricing/details/storage/blobs,
  as retrieved 2026-12.

Any other provider (``local`` files, a testbed's regions) charges nothing. Prices change: these are
estimates, like the egress grid's (planner/data/SOURCE.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from planner.providers import provider_name

KINDS = ("write", "read", "list", "head", "delete")


@dataclass(frozen=True)
class RequestPrices:
    """USD per 1,000 requests of each kind."""

    write: float
    read: float
    list: float
    head: float
    delete: float = 0.0


PRICES: dict[str, RequestPrices] = {
    "aws": RequestPrices(write=0.005, read=0.0004, list=0.005, head=0.0004),
    "gcp": RequestPrices(write=0.005, read=0.0004, list=0.005, head=0.0004),
    "azure": RequestPrices(write=0.0055, read=0.00044, list=0.0055, head=0.00044),
}
FREE = RequestPrices(write=0.0, read=0.0, list=0.0, head=0.0)


@dataclass
class RequestCounts:
    """Requests one store gets: ``write`` (PUTs, multipart begin / part / complete), ``read``
    (GETs), ``list`` (listing pages), ``head`` (metadata reads), ``delete``."""

    write: int = 0
    read: int = 0
    list: int = 0
    head: int = 0
    delete: int = 0

    def add(self, other: "RequestCounts") -> None:
        for kind in KINDS:
            setattr(self, kind, getattr(self, kind) + getattr(other, kind))

    @property
    def total(self) -> int:
        return sum(getattr(self, kind) for kind in KINDS)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def request_prices(region: str) -> RequestPrices:
    """The request prices of a store in ``region`` (a region tag such as ``aws:us-east-1``)."""
    return PRICES.get(provider_name(region), FREE)


def requests_usd(region: str, counts: RequestCounts) -> float:
    """What ``counts`` requests to a store in ``region`` cost."""
    prices = request_prices(region)
    return sum(getattr(counts, kind) * getattr(prices, kind) for kind in KINDS) / 1000.0
