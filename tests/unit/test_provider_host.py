"""dstack's lean host of the local resources and its launcher: the host loads the SDK's
protocol modules without the SDK, names types from URNs and hands the engine's property values
back unchanged; the launcher replaces an older one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dstack.stacks import provider_host
from dstack.stacks.engine_install import LAUNCHER, LAUNCHER_NAME, write_launcher
from dstack.stacks.local_ops import OPERATIONS


def test_the_protocol_loads_without_importing_the_sdk() -> None:
    # Fails when the SDK moves its generated modules: the host then cannot start.
    code = (
        "import sys\n"
        "from dstack.stacks.provider_host import protocol\n"
        "plugin, provider, grpc_mod = protocol()\n"
        "assert hasattr(grpc_mod, 'ResourceProviderServicer')\n"
        "assert hasattr(provider, 'CreateResponse') and hasattr(plugin, 'PluginInfo')\n"
        "print(sorted(m for m in sys.modules if m == 'pulumi' or m.startswith('pulumi.')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_type_names_come_from_the_urn() -> None:
    urn = "urn:pulumi:run-a::dstack::pulumi-python:dynamic/dstack:RunnerProcess::runner"
    assert provider_host.type_name(urn) == "RunnerProcess"
    child = "urn:pulumi:s::dstack::pulumi:pulumi:Stack$pulumi-python:dynamic/dstack:Folder::w"
    assert provider_host.type_name(child) == "Folder"
    assert set(OPERATIONS) == {"Folder", "RunnerProcess"}


def test_properties_round_trip_with_whole_numbers_as_ints() -> None:
    props = {"path": "/tmp/x", "keep": True, "pid": 4242, "start_ticks": 987654321,
             "__provider": "gASV...", "gone": None}
    back = provider_host.props_of(provider_host.struct_of(props))
    assert back == {k: v for k, v in props.items() if v is not None}
    assert isinstance(back["pid"], int) and back["keep"] is True


def test_the_launcher_replaces_an_older_one_and_a_link_to_pulumis(tmp_path: Path) -> None:
    official = tmp_path / "official" / LAUNCHER_NAME
    official.parent.mkdir()
    official.write_text("#!/bin/sh\nexec python3 -m pulumi.dynamic \"$@\"\n")
    for name, make in (("linked", lambda p: p.symlink_to(official)),
                       ("older", lambda p: p.write_text("#!/bin/sh\nexec old\n"))):
        bin_dir = tmp_path / name
        bin_dir.mkdir()
        make(bin_dir / LAUNCHER_NAME)
        write_launcher(bin_dir)
        launcher = bin_dir / LAUNCHER_NAME
        assert not launcher.is_symlink()
        assert launcher.read_text() == LAUNCHER
        assert launcher.stat().st_mode & 0o777 == 0o755
    assert "pulumi.dynamic" in official.read_text()  # Pulumi's own is left as it was
