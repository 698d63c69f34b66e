"""The ``skyplane-provider`` command line: one sub-command per module in ``COMMANDS``.

Each module exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Every parser, sub-commands' included, takes ``-v`` and shows defaults and examples (:mod:`.wording`).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys

# Nothing of ours at the top: a command that starts a job starts its coordinator's process first
# (main), and planner's package (dataclasses, inspect) took ~13 ms of that on an idle machine.

#: The loggers -v turns to DEBUG.
OUR_LOGGERS = ("skyplane_provider", "gateway", "planner")
#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS: list[str] = ["cp", "resume", "publish", "datasets", "mb", "deprovision", "plan", "testbed"]
#: The module of each sub-command whose name is not its module's.
_MODULE_OF = {"sync": "cp"}
#: Sub-commands that start a job whose coordinator usually runs on this host: its process starts
#: before this one imports its own modules (see :func:`main`).
_STARTS_A_JOB = ("cp", "sync")

#: The top-level help's example lines (laid out by wording.examples when the parser is built).
EXAMPLES = (
    "skyplane-provider mb s3://raw                                  # a bucket (emulators: see README.md)",
    "skyplane-provider cp -r s3://raw/events/ gs://lake/events/     # copy a prefix",
    "skyplane-provider sync s3://raw/events/ gs://lake/events/      # only what is missing or changed",
    "skyplane-provider plan --src aws:us-east-1 --dst gcp:us-west4-a --solver ilp",
    "skyplane-provider COMMAND --help                               # options and examples of one command",
)


def version_text() -> str:
    """``skyplane-provider 0.1.0 (Python 3.11.7; apache-airflow 3.3.2, prefect 3.7.7)``: this build (a
    gateway host's shipped copy says ``0.1.0+<content hash>``) and the integrations installed beside it."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    extras = ", ".join(f"{d} {v}" for d in ("apache-airflow", "prefect") if (v := installed(d)))
    return (f"skyplane-provider {installed('skyplane-provider') or 'unknown (not installed)'} "
            f"(Python {platform.python_version()}{'; ' + extras if extras else ''})")


class _Version(argparse.Action):
    """``--version``: the text is looked up only when asked for (importlib.metadata scans every installed
    distribution: ~13 ms of every command's start otherwise)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())  # on stdout, as argparse's own version action
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or of ``command``'s module alone when it names one (a copy
    does not import the testbed's, the broker's or the planner command's modules: 20-100 ms of every
    command's start on the 2-core machine; ``--help`` and an unknown name still get all of them)."""
    from .wording import HelpFormatter, examples

    parser = argparse.ArgumentParser(
        prog="skyplane-provider",
        description="Plan and run overlay-routed transfers between clouds and regions.",
        epilog=examples(*EXAMPLES), formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version (and Python's, Airflow's and Prefect's) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    module = _MODULE_OF.get(command, command)
    for name in [module] if module in COMMANDS else COMMANDS:
        importlib.import_module(f"skyplane_provider.cli.{name}").register(sub)
    for child in _subparsers(parser):
        child.formatter_class = HelpFormatter
        # SUPPRESS: a sub-command that was not given -v leaves the top-level answer alone.
        child.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="log at DEBUG level")
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every sub-command parser below ``parser``, nested ones (``testbed up``) included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [child, *_subparsers(child)]
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The sub-command is the first word that is not an option (the top-level options take no value).
    command = next((a for a in argv if not a.startswith("-")), None)
    job_id = _coordinator_ahead(command, argv)
    try:
        return _run(build_parser(command), argv, job_id)
    finally:
        if job_id is not None:
            from skyplane_provider.coordinator.launcher import drop_ahead

            drop_ahead(job_id)  # not launched (a usage error, a refused request, a dry run): it exits unused


def _coordinator_ahead(command: str | None, argv: list[str]) -> str | None:
    """For a command that starts a job: its id, after starting its coordinator's process (it imports
    its modules, ~0.1 CPU-s, beside this process's imports and checks, then waits for the go; see
    :func:`skyplane_provider.coordinator.launcher.start_ahead`), which starts the job's first gateway's
    process too when the job looks local (:func:`_looks_local`). ``Transfer.prepare()`` would start
    them too, but only once this process has imported what it needs (0.1-0.2 s later)."""
    if command not in _STARTS_A_JOB:
        return None
    from os import urandom

    from skyplane_provider.coordinator.launcher import start_ahead

    job_id = urandom(16).hex()  # what uuid.uuid4().hex holds, without importing uuid (~5 ms)
    start_ahead(job_id, gateways=1 if _looks_local(argv) else 0, schemes=_schemes(argv))
    return job_id


def _schemes(argv: list[str]) -> tuple[str, ...]:
    """The URI schemes among the words of a command, before they are parsed (``s3``, ``gs``, ...): the
    gateway started ahead imports their SDKs at once. A word that is no store URI only names a
    scheme no store has, which the gateway ignores."""
    found = (word.partition("://")[0] for word in argv if "://" in word)
    return tuple(dict.fromkeys(scheme for scheme in found if scheme.isalnum()))


def _looks_local(argv: list[str]) -> bool:
    """Whether the words of a ``cp``/``sync`` command, before they are parsed, leave its gateways to
    the default provisioner (``local`` on loopback: one gateway writes every destination, Plan.on_one_host)
    and move data: no ``--provisioner``/``--provisioner-settings`` (or an abbreviation argparse
    would take), no ``--dry-run``, no ``--help``. A wrong guess costs one gateway process that
    imports its modules and exits unused (a sync with nothing to copy), never a gateway that runs."""
    return not any(a.startswith(("--pro", "--dr", "--h", "-h")) for a in argv)


def _run(parser: argparse.ArgumentParser, argv: list[str], job_id: str | None) -> int:
    from planner.errors import SkyplaneError

    from .wording import UsageError

    args = parser.parse_args(argv)
    if job_id is not None:
        args.job_id = job_id
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:  # ours only: the SDKs' DEBUG output would bury it
        for name in OUR_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:  # as argparse reports its own usage errors
        print(f"skyplane-provider {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SkyplaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> int:
    """The console script's entry point: :func:`main`, then no final collection over what the command
    left behind. The interpreter's last act is a full collection of every object still held (the
    region grid, the plan, the job's objects): 0.08-0.17 s between a copy's last line and the
    command's exit on the 2-core machine at load 8 (strace, 2026-12-06), which a user waits for.
    Frozen objects are left to the process's end, as the gateway and the coordinator do."""
    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(run())
