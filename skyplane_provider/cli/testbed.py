"""``skyplane-provider testbed up|down|status|scenarios``: the emulated WAN on this host (needs root)."""

from __future__ import annotations

import argparse
import json
import sys

from planner.errors import ProvisionError, SkyplaneError
from skyplane_provider.testbed import Testbed, load_scenario, shipped_scenarios, teardown, unrecorded_testbeds
from skyplane_provider.testbed.iproute import unusable_reason
from skyplane_provider.testbed.state import recorded_ids, state_root

from .wording import examples

EXAMPLES = examples(
    "skyplane-provider testbed scenarios",
    "skyplane-provider testbed up --scenario aws-us-east-1--gcp-us-west4-a --id demo --grid-csv /tmp/tb-grid.csv",
    "skyplane-provider testbed status demo",
    "skyplane-provider testbed settings demo > /tmp/tb.json     # for cp --provisioner-settings",
    "skyplane-provider testbed down demo",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("testbed", help="emulated WAN: regions as network namespaces with capped links",
                       description="Build, inspect and remove emulated wide-area testbeds (root only; "
                                   "docs/testbed.md).", epilog=EXAMPLES)
    cmds = p.add_subparsers(dest="testbed_command", metavar="ACTION", required=True)

    up = cmds.add_parser("up", help="build a testbed from a scenario and leave it running", description="Build a testbed from a scenario and leave it running.")
    up.add_argument("--scenario", required=True, help="a shipped scenario name or a scenario .json file")
    up.add_argument("--vms", type=int, metavar="N",
                    help="gateway VMs per region: each in its own namespace with the planner's per-VM caps "
                         "(default: the scenario's shape; shipped scenarios share one link per region pair)")
    up.add_argument("--scale", type=float, help="Mbit/s of emulated link per Gbps of grid (default: the scenario's, "
                                                "or what fits two cores with --vms)")
    up.add_argument("--id", dest="testbed_id", help="testbed id, 1-6 lowercase letters/digits (default: random)")
    up.add_argument("--grid-csv", help="write the grid to plan on for this testbed (with its prices) to this file")
    up.add_argument("--json", action="store_true", help="print the status as JSON")
    up.set_defaults(func=run_up)

    down = cmds.add_parser("down", help="remove testbeds (default: every one recorded in $SKYPLANE_HOME)", description="Remove testbeds (default: every one recorded in $SKYPLANE_HOME).")
    down.add_argument("ids", nargs="*", metavar="ID", help="testbed ids")
    down.set_defaults(func=run_down)

    status = cmds.add_parser("status", help="show testbeds (default: every one recorded)", description="Show testbeds (default: every one recorded).")
    status.add_argument("ids", nargs="*", metavar="ID", help="testbed ids")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run_status)

    text = "print the local provisioner's settings that start gateways in a testbed's namespaces"
    settings = cmds.add_parser("settings", help=text, description=text + ": save them and pass the file as "
                               "`cp --provisioner-settings FILE` (docs/testbed.md).")
    settings.add_argument("testbed_id", metavar="ID", help="testbed id")
    settings.set_defaults(func=run_settings)

    scen = cmds.add_parser("scenarios", help="list the shipped scenarios", description="List the shipped scenarios.")
    scen.set_defaults(func=run_scenarios)


def _require_host() -> None:
    reason = unusable_reason()
    if reason:
        raise ProvisionError(f"cannot run a testbed here: {reason}", hint="run as root on Linux with iproute2")


def run_up(args: argparse.Namespace) -> int:
    _require_host()
    scenario = load_scenario(args.scenario)
    if args.vms is not None:  # 0 is refused by the scenario, not taken for "not given"
        scenario = scenario.as_vms(args.vms)
    if args.scale:
        scenario = scenario.with_scale(args.scale)
    testbed = Testbed(scenario, testbed_id=args.testbed_id).up()
    if args.grid_csv:
        testbed.grid_csv(args.grid_csv)
    if args.json:
        print(json.dumps(testbed.status(), indent=1))
    else:
        _print_status([testbed.status()])
    return 0


def run_down(args: argparse.Namespace) -> int:
    _require_host()
    failed = 0
    for testbed_id in args.ids or recorded_ids(state_root()):
        try:
            teardown(testbed_id)
        except SkyplaneError as exc:  # keep going: one stuck testbed must not shield the others
            print(f"testbed {testbed_id}: {exc}", file=sys.stderr)
            failed += 1
        else:
            print(f"testbed {testbed_id}: down")
    return 1 if failed else 0


def run_status(args: argparse.Namespace) -> int:
    statuses = [Testbed.attach(i).status() for i in args.ids or recorded_ids(state_root())]
    unrecorded = {} if args.ids or unusable_reason() else unrecorded_testbeds()
    if args.json:
        print(json.dumps({"testbeds": statuses, "unrecorded": unrecorded}, indent=1))
        return 0
    _print_status(statuses)
    for testbed_id, namespaces in sorted(unrecorded.items()):
        print(f"testbed {testbed_id}: not recorded under {state_root()} ({', '.join(namespaces)}); "
              f"`skyplane-provider testbed down {testbed_id}` removes it")
    return 0


def run_settings(args: argparse.Namespace) -> int:
    print(json.dumps({"placement": Testbed.attach(args.testbed_id).gateway_placement()}, indent=1))
    return 0


def run_scenarios(args: argparse.Namespace) -> int:
    for name, s in sorted(shipped_scenarios().items()):
        print(f"{name}\n    {s.description}\n    scale {s.scale_mbit_per_gbps:g} Mbit/s per Gbps")
    return 0


def _print_status(statuses: list[dict]) -> None:
    if not statuses:
        print("no testbeds")
    for st in statuses:
        shape = f"{st['vms_per_region']} VM(s) per region" if st.get("capacity") == "vm" else "shared links"
        print(f"testbed {st['testbed_id']} ({st['scenario']}): {st['state']}, slot {st['slot']}, {shape}")
        for r in st["regions"]:
            print(f"  {r['region']:<28} netns {r['netns']}  region {r['region_address']}  "
                  f"control {r['control_address']}  processes {len(r['processes'])}")
            for k, vm in enumerate(r.get("vms", [])[1:], start=1):
                print(f"  {'':<24} VM {k} netns {vm['netns']}  region {vm['region_address']}")
        per = " from each VM" if st.get("capacity") == "vm" else ""
        for link in st["links_mbit"]:
            print(f"  {link['src']} -> {link['dst']}: {link['mbit']:g} Mbit/s{per}")
