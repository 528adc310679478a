"""dstack's lean host of the local resources: it loads the SDK's protocol modules without the
SDK, names types from URNs, and hands the engine's property values back unchanged."""

from __future__ import annotations

import subprocess
import sys

from dstack.stacks import provider_host
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
