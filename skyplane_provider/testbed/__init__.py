"""Emulated wide-area testbed: regions as network namespaces joined by rate-capped veth pairs.

See docs/testbed.md for the addressing, the safety checks and the shipped scenarios.
"""

from .scenario import Scenario, load_scenario, shipped_scenarios
from .testbed import Testbed, teardown, unrecorded_testbeds

__all__ = ["Scenario", "Testbed", "load_scenario", "shipped_scenarios", "teardown", "unrecorded_testbeds"]
