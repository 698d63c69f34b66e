"""Provider registration: what ``airflow providers list`` shows and which hook serves our connection type.

Airflow calls :func:`get_provider_info` while it reads its configuration, so this module must import
nothing of Airflow and nothing heavy of ours.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

INTEGRATION = "Skyplane"
CONN_TYPE = "skyplane"


def _version() -> str:
    try:
        return version("skyplane-provider")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def get_provider_info() -> dict:
    """The provider's metadata, in the shape of airflow-core's ``provider_info.schema.json``."""
    return {
        "package-name": "skyplane-provider",
        "name": "Skyplane",
        "description": "Cross-cloud object transfers (S3, GCS, Azure Blob) through an overlay of gateways: "
                       "one operator for every copy, sync and multicast.",
        "versions": [_version()],
        "integrations": [{
            "integration-name": INTEGRATION,
            "external-doc-url": "https://www.usenix.org/conference/nsdi23/presentation/jain",
            "tags": ["software"],
        }],
        "operators": [{"integration-name": INTEGRATION,
                       "python-modules": ["skyplane_provider.airflow.operators"]}],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["skyplane_provider.airflow.hooks"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["skyplane_provider.airflow.triggers"]}],
        # ObjectStoragePath("sky://DATASET/key"): the storage broker's replica-aware reads
        "filesystems": ["skyplane_provider.broker.fs"],
        "connection-types": [{
            "connection-type": CONN_TYPE,
            "hook-class-name": "skyplane_provider.airflow.hooks.SkyplaneHook",
            "hook-name": "Skyplane",
            "ui-field-behaviour": {
                "hidden-fields": ["host", "schema", "login", "password", "port"],
                "relabeling": {},
                "placeholders": {
                    "extra": '{"provisioner": "ssh", "provisioner_settings": {"hosts": {"aws:us-east-1": '
                             '["ubuntu@203.0.113.10"]}, "known_hosts": "~/.ssh/known_hosts"}}',
                },
            },
        }],
    }
