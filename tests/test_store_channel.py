"""A local job's client checks and lists its stores through the job's first gateway, started ahead
(gateway/store_channel.py, skyplane_provider/transfer/channel_stores.py), and imports no store SDK:
through moto, fake-gcs-server and Azurite, real gateway daemons and a real CLI process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from gateway import store_channel
from gateway.stores import open_store
from planner.errors import CredentialsError, NotFoundError
from skyplane_provider.transfer.channel_stores import ChannelClient, ChannelStore
from skyplane_provider.transfer.preflight import check_store

from .helpers import coordinator_pids, digests, gateway_pids, put_objects, read_all, wait_gone

#: Top-level modules of the store SDKs (and what only they pull in).
SDKS = ("boto3", "botocore", "s3transfer", "google.cloud", "google.api_core", "google.auth", "azure")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path / "home"))
    return str(tmp_path / "home")


@pytest.fixture
def channel():
    """A store channel whose far end a gateway daemon serves (``--store-fd``) while it waits for a config."""
    mine, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.daemon", "--config", "/nonexistent/config.json",
                             "--wait-for-config", "--store-fd", str(theirs.fileno())],
                            stdin=subprocess.PIPE, pass_fds=(theirs.fileno(),))
    theirs.close()
    yield store_channel.StoreChannel(mine), proc
    mine.close()
    proc.stdin.close()  # no go: it exits
    assert proc.wait(30) == 0


def _sdk_imports(importtime: str) -> list[str]:
    """The store SDK modules named in a ``-X importtime`` trace."""
    names = [line.rsplit("|", 1)[-1].strip() for line in importtime.splitlines() if line.startswith("import time:")]
    return sorted({n for n in names if n.startswith(SDKS)})


def test_a_local_cp_client_imports_no_store_sdk(tmp_path, home, s3_bucket, gcs_bucket):
    objs = {f"d/f{i}.csv": os.urandom(50_000) for i in range(3)}
    put_objects(s3_bucket, objs)
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "skyplane_provider.cli.main", "cp", "-r",
                          f"{s3_bucket}/d/", f"{gcs_bucket}/out/"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert read_all(gcs_bucket, "out/") == digests({k[2:]: v for k, v in objs.items()})
    assert _sdk_imports(out.stderr) == []
    # ...while the same trace of a client that opens a store itself and uses a verb of botocore's names
    # them (the check can fail)
    probe = subprocess.run([sys.executable, "-X", "importtime", "-c",
                            f"from gateway.stores import open_store; open_store({s3_bucket!r}).presign('k', 60)"],
                           capture_output=True, text=True, timeout=120)
    assert "botocore.client" in _sdk_imports(probe.stderr)


def test_a_refused_local_cp_says_why_and_leaves_nothing(tmp_path, home, s3_bucket):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"payload")
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "skyplane_provider.cli.main", "cp", "-r",
                          str(tmp_path / "src"), "s3://no-such-bucket-anywhere/x/"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "error: s3://no-such-bucket-anywhere does not exist" in out.stderr
    assert "skyplane-provider mb s3://no-such-bucket-anywhere" in out.stderr
    assert _sdk_imports(out.stderr) == []
    assert gateway_pids(home) == [] and coordinator_pids(home) == []
    assert not os.path.exists(os.path.join(home, "jobs")) or os.listdir(os.path.join(home, "jobs")) == []


@pytest.mark.parametrize("kind", ["s3_bucket", "gcs_bucket", "azure_container"])
def test_the_checks_through_a_gateway_answer_as_the_stores_do(request, kind, channel):
    root = request.getfixturevalue(kind)
    chan, _ = channel
    put_objects(root, {"p/a": b"x" * 10, "p/b": b"y" * 20})
    store = ChannelStore(root, ChannelClient(chan, {}))
    direct = open_store(root)
    assert store.capabilities == direct.capabilities
    assert store.region() == direct.region()
    store.check()
    assert store.list_page("p/", None, 1)[0] == direct.list_page("p/", None, 1)[0]
    assert [o.key for o in store.list("p/")] == ["p/a", "p/b"]
    assert store.head("p/b").size == 20
    check_store({"uri": root, "prefix": "out/", "write": True}, {}, lambda r, c: ChannelStore(r, ChannelClient(chan, c)))
    check_store({"uri": root, "prefix": "p/", "write": False}, {}, lambda r, c: ChannelStore(r, ChannelClient(chan, c)))
    assert sorted(read_all(root)) == ["p/a", "p/b"]  # the probe write left nothing
    assert store.pending_uploads("out/") == []


def test_a_missing_bucket_and_bad_credentials_fail_as_they_do_here(emulators, channel):
    chan, _ = channel
    opener = lambda r, c: ChannelStore(r, ChannelClient(chan, c))  # noqa: E731
    for uri, credentials, cls in [
        ("s3://no-such-bucket-anywhere", {}, NotFoundError),
        ("gs://no-such-bucket-anywhere", {}, NotFoundError),
        ("az://otheraccount/container", {}, CredentialsError),
    ]:
        check = {"uri": uri, "prefix": "x/", "write": True}
        with pytest.raises(cls) as here:
            check_store(check, credentials)
        with pytest.raises(cls) as there:
            check_store(check, credentials, opener)
        assert str(there.value) == str(here.value) and there.value.hint == here.value.hint


def test_a_broken_channel_runs_the_operations_here(s3_bucket):
    mine, theirs = socket.socketpair()
    theirs.close()  # the gateway died before it answered
    chan = store_channel.StoreChannel(mine)
    store = ChannelStore(s3_bucket, ChannelClient(chan, {}))
    store.check()
    assert store.list_page("", None, 1) == ([], None)
    with pytest.raises(NotFoundError):
        ChannelStore("s3://no-such-bucket-anywhere", ChannelClient(chan, {})).check()


def test_a_gateway_serves_the_channel_until_its_go_and_then_runs(home, s3_bucket, gcs_bucket):
    """Through the Transfer API: the client's prepare() went through the gateway started ahead, which
    then moved the data as the job's gateway."""
    from skyplane_provider.transfer import Transfer, TransferRequest

    objs = {f"d/f{i}": os.urandom(30_000) for i in range(4)}
    put_objects(s3_bucket, objs)
    transfer = Transfer(TransferRequest(src=f"{s3_bucket}/d/", dsts=[f"{gcs_bucket}/out/"]))
    transfer.prepare()
    assert isinstance(transfer.source.store, ChannelStore) and isinstance(transfer.dests[0].store, ChannelStore)
    stats = transfer.run()
    assert stats.objects == 4 and stats.verified
    assert read_all(gcs_bucket, "out/") == digests({k[2:]: v for k, v in objs.items()})
    assert wait_gone(home) == []


def _imported(importtime: str) -> list[str]:
    """The modules of a ``-X importtime`` trace, in the order their imports finished."""
    return [line.rsplit("|", 1)[-1].strip() for line in importtime.splitlines() if line.startswith("import time:")]


@pytest.mark.parametrize("preload", [["--preload", "s3,gcs,nosuch"], []])
def test_a_gateway_waiting_for_its_config_loads_the_jobs_sdks_then_serves_then_its_own_modules(tmp_path, preload):
    """``--preload``: the SDKs load at exec, before any request and before the daemon's own modules,
    which load after the channel is served; without it no SDK loads until a store needs one."""
    mine, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "gateway.daemon", "--config",
                             str(tmp_path / "config.json"), "--wait-for-config", "--store-fd", str(theirs.fileno()),
                             *preload], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            pass_fds=(theirs.fileno(),))
    theirs.close()
    chan = store_channel.StoreChannel(mine)
    ChannelStore(f"file://{tmp_path}", ChannelClient(chan, {})).check()  # a store that needs no SDK
    mine.close()
    _, trace = proc.communicate("", timeout=60)  # no go: it exits
    assert proc.returncode == 0
    modules = _imported(trace)
    assert "gateway.node" in modules
    assert modules.index("gateway.store_channel") < modules.index("gateway.node")
    if preload:
        # (the adapters themselves are imported through importlib, which -X importtime does not trace)
        assert {"gateway.stores.s3_api", "gateway.stores.gcs_api", "google.auth"} <= set(modules)
        assert not [m for m in modules if m.startswith(("boto3", "botocore"))]  # the S3 store speaks REST itself
        assert "google.cloud.storage" not in modules  # the GCS store speaks the JSON API itself (gcs_api)
        assert modules.index("gateway.stores.s3_api") < modules.index("gateway.store_channel")
    else:
        assert _sdk_imports(trace) == []


def test_the_cli_names_the_schemes_of_its_words():
    from skyplane_provider.cli.main import _schemes

    assert _schemes(["cp", "-r", "s3://b/d/", "gs://c/out/", "--exclude", "x://y", "/local", "s3://b2"]) == \
        ("s3", "gs", "x")
    assert _schemes(["cp", "-r", "/a", "/b", "--include=s3://z", "://q"]) == ()


def test_a_gateway_loads_the_store_sdks_without_the_optional_packages_it_never_uses():
    """The daemon's processes keep aiohttp and grpc out (gateway/daemon.py,
    UNUSED_OPTIONAL_PACKAGES): the three SDKs still load, and open their stores, without them."""
    probe = ("import sys\n"
             "from gateway import daemon, stores\n"
             "daemon._skip_unused_optional_packages()\n"
             "stores.preload(['s3', 'gcs', 'azure'])\n"
             "from gateway.stores import azure, gcs, s3\n"
             "print(sorted(m for m in daemon.UNUSED_OPTIONAL_PACKAGES if sys.modules.get(m) is not None))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
