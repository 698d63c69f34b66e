"""Provider registration: what ``airflow providers list`` shows and which hook serves our connection type.

The metadata is declared in ``provider.yaml`` beside this module (the shape of Airflow's own
providers' ``provider.yaml``, including the ``skyplane`` connection form's ``conn-fields`` and
``ui-field-behaviour``); :func:`get_provider_info` returns it with the installed version. Airflow calls
it while it reads its configuration, so this module imports nothing of Airflow and nothing heavy of
ours (PyYAML comes with Airflow).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CONN_TYPE = "skyplane"
PROVIDER_YAML = Path(__file__).with_name("provider.yaml")


def _version() -> str:
    try:
        return version("skyplane-provider")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


@cache
def _declared() -> dict:
    import yaml

    return yaml.safe_load(PROVIDER_YAML.read_text())


def get_provider_info() -> dict:
    """The provider's metadata, in the shape of airflow-core's ``provider_info.schema.json``."""
    return {**_declared(), "versions": [_version()]}
