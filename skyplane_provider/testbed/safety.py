"""Route checks that stand between the testbed and the outside world.

Traffic to an address that only exists inside a namespace would, from a namespace without a route
to it, leave the host through eth0. So before any traffic the testbed asks the kernel
(``ip route get``, which sends nothing) that every address it will use routes over the testbed's
own devices, and refuses to run otherwise.
"""

from __future__ import annotations

from planner.errors import ProvisionError

from . import iproute
from .addressing import in_testbed_range


def route_problem(address: str, expected_device: str, netns: str | None = None) -> str | None:
    """Why ``address`` does not route over ``expected_device`` (seen from ``netns``, root by
    default), or None when it does."""
    where = f"netns {netns}" if netns else "the root namespace"
    if not in_testbed_range(address):
        return f"{address} is outside 198.18.0.0/15, the only range a testbed may use"
    route = iproute.route_get(address, netns)
    if route is None:
        return f"{address} is unreachable from {where}"
    if route.get("dev") != expected_device:
        via = f" via {route['gateway']}" if route.get("gateway") else ""
        return f"{address} routes over {route.get('dev')}{via} from {where}, not over {expected_device}"
    return None


def check_route(address: str, expected_device: str, netns: str | None = None) -> None:
    """Raise ``ProvisionError`` unless ``address`` routes over ``expected_device``."""
    problem = route_problem(address, expected_device, netns)
    if problem:
        raise ProvisionError(f"refusing to send traffic: {problem}",
                             hint="the testbed is not (fully) up; run `skyplane-provider testbed down` and up again")


def isolation_problem(netns: str) -> str | None:
    """A namespace must have no default route: then nothing in it can reach beyond the testbed."""
    if iproute.default_routes(netns):
        return f"netns {netns} has a default route"
    return None
