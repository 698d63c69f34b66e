"""Shared pytest setup. Fixture modules live in tests/fixtures/, one per kind of real server."""

import os
import shutil
import tempfile

pytest_plugins = [
    "tests.fixtures.emulators",
    "tests.fixtures.testbed",
    "tests.fixtures.sshd",
    "tests.fixtures.ec2",
    "tests.fixtures.cloud_standins",
    "tests.fixtures.prefect",
    "tests.fixtures.airflow",
    "tests.fixtures.gateways",
]


def pytest_configure(config) -> None:
    """Local stores' MD5 cache (gateway/stores/digest_cache.py) goes to a file of this run, not the
    user's ~/.cache: tests must neither read digests of earlier runs nor leave any behind."""
    if "SKYPLANE_DIGEST_CACHE" not in os.environ:
        config._skyplane_digest_dir = tempfile.mkdtemp(prefix="skyplane-md5-")
        os.environ["SKYPLANE_DIGEST_CACHE"] = os.path.join(config._skyplane_digest_dir, "md5.sqlite3")


def pytest_unconfigure(config) -> None:
    directory = getattr(config, "_skyplane_digest_dir", None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
