"""What one gateway VM of each provider can do and what it costs.

Caps: Skyplane's planner defaults (``skyplane-project/skyplane``, ``skyplane/planner/solver.py``,
``ThroughputProblem``, Apache-2.0): per-VM egress/ingress limits of AWS 5/10 Gbps, GCP 7/16 Gbps,
Azure 16/16 Gbps, and linear throughput up to the 64 connections its iperf3 grid was measured with.

Prices: on-demand Linux list prices per hour of the VM types the grid was measured on, in the
providers' cheapest US regions (us-east-1, us-central1, East US) as published on
aws.amazon.com/ec2/pricing/on-demand, cloud.google.com/compute/vm-instance-pricing and
azure.microsoft.com/pricing/details/virtual-machines/linux (2024); other regions cost up to ~30%
more.

``local`` is the pseudo-provider of gateways running as processes on the user's machine: free, and
not capped by the planner. Any provider not listed here (tags of a user's own grid) is treated the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The iperf3 grid was measured with this many TCP connections per VM pair; we assume throughput
#: grows linearly with connections up to it, and a gateway opens at most this many.
CONNECTIONS_PER_VM = 64

#: Billed seconds per gateway on top of the transfer: boot and install time, and the 60 s
#: minimum that AWS and GCP bill per instance start. Only this makes the plan depend on the size.
VM_STARTUP_SECONDS = 60.0


@dataclass(frozen=True)
class Provider:
    """Per-VM limits and price of one provider's gateway VM."""

    name: str
    vm_type: str
    egress_gbps: float
    ingress_gbps: float
    usd_per_hour: float


PROVIDERS: dict[str, Provider] = {
    "aws": Provider("aws", "m5.8xlarge", egress_gbps=5.0, ingress_gbps=10.0, usd_per_hour=1.536),
    "gcp": Provider("gcp", "n2-standard-32", egress_gbps=7.0, ingress_gbps=16.0, usd_per_hour=1.554),
    "azure": Provider("azure", "Standard_D32_v5", egress_gbps=16.0, ingress_gbps=16.0, usd_per_hour=1.536),
    "local": Provider("local", "process", egress_gbps=math.inf, ingress_gbps=math.inf, usd_per_hour=0.0),
}


def provider_name(tag: str) -> str:
    """``aws:us-east-1`` -> ``aws``; a tag without a colon is its own provider (``local``)."""
    return tag.split(":", 1)[0]


#: The providers whose regions a price grid holds.
CLOUDS = ("aws", "gcp", "azure")


def is_cloud(tag: str) -> bool:
    """Whether a grid may hold region ``tag`` (a local or testbed region it never does)."""
    return provider_name(tag) in CLOUDS


def provider_of(tag: str) -> Provider:
    """The provider of a region tag; unknown providers are uncapped and free, like ``local``."""
    name = provider_name(tag)
    known = PROVIDERS.get(name)
    if known is not None:
        return known
    return Provider(name, "unknown", egress_gbps=math.inf, ingress_gbps=math.inf, usd_per_hour=0.0)
