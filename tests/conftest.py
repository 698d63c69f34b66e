"""Shared pytest setup. Fixture modules live in tests/fixtures/, one per kind of real server."""

pytest_plugins = [
    "tests.fixtures.emulators",
    "tests.fixtures.testbed",
    "tests.fixtures.sshd",
    "tests.fixtures.ec2",
    "tests.fixtures.prefect",
    "tests.fixtures.airflow",
    "tests.fixtures.gateways",
]
