"""The app providers end to end, with real servers: `dstack run APP ... -d` through the
installed command, the app's URL from `dstack ps --json`, real HTTP requests (and headless
Chromium for one page rendered by JavaScript), then `dstack stop` and what must be gone."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .harness import RUN_NAME, TERMINAL, Dstack, poll, write_project

pytestmark = pytest.mark.engine

APP_START_S = 90  # jupyter and gradio start slowly on 2 cores
CHROMIUM = Path("/usr/bin/chromium")

WORKFLOWS = """
workflows:
  - name: st-app
    provider: streamlit
    target: st_app.py
    args: ["--greeting", "Hello from the workflow file"]
  - name: gr-app
    provider: gradio
    file: gr_app.py
  - name: api-app
    provider: fastapi
    app: api:app
    uvicorn: {"no-server-header": true}
  - name: jl-app
    provider: lab
  - name: nb-app
    provider: notebook
  - name: web
    provider: bash
    ports: 1
    commands:
      - python -m http.server "$PORT_0" --bind "$DSTACK_HOST"
"""

FILES = {
    "st_app.py": """
        import sys
        import streamlit as st
        st.set_page_config(page_title="dstack streamlit probe")
        args = sys.argv[1:]
        greeting = args[args.index("--greeting") + 1] if "--greeting" in args else "no greeting"
        print("greeting: " + greeting, flush=True)
        st.title(greeting)
        st.write("computed by the script: " + str(6 * 7))
    """,
    "gr_app.py": """
        import gradio as gr
        with gr.Blocks(title="dstack gradio probe") as demo:
            name = gr.Textbox(label="dstack probe name")
            out = gr.Textbox(label="dstack probe greeting")
            loaded = gr.Markdown("waiting for the server")
            name.submit(lambda n: "hi " + n, name, out, api_name="greet")
            demo.load(lambda: "loaded by the server: " + str(6 * 7), None, loaded)
        demo.launch()
    """,
    "api.py": """
        import os
        from fastapi import FastAPI
        app = FastAPI()

        @app.get("/")
        def root():
            return {"app": "dstack-fastapi-probe", "run": os.environ["DSTACK_RUN"],
                    "port": int(os.environ["PORT_0"])}

        @app.get("/items/{n}")
        def item(n: int):
            return {"n": n, "square": n * n}
    """,
    "data/notes.txt": """
        files the jupyter server must list
    """,
    "index.html": """
        <html><body><p>served by http.server for dstack-bash-probe</p></body></html>
    """,
}


@pytest.fixture(scope="module")
def dstack(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Dstack:
    """One project holding every app, with a dstack home shared by this module's tests."""
    project = write_project(tmp_path_factory.mktemp("project"), WORKFLOWS, FILES)
    return Dstack(module_home, project)


# -- HTTP ------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def get(url: str, timeout: float = 30) -> Reply:
    """GET `url` without following redirects; HTTP errors are replies too."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()},
                         resp.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()},
                     exc.read().decode("utf-8", "replace"))


def answers(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def listen_addresses(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on `port` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.rsplit(":", 1)
                if state != "0A" or int(hexport, 16) != port:
                    continue
                raw = bytes.fromhex(addr)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


# -- processes -------------------------------------------------------------------------------


def run_processes(workdir: Path) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes naming `workdir` in their command line or working
    in it: the run's runner, its job and whatever the job started."""
    found = []
    needle = str(workdir)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if state == "Z":
            continue
        if needle in cmdline or cwd == needle or cwd.startswith(needle + "/"):
            found.append((int(entry.name), cmdline))
    return found


# -- one served app --------------------------------------------------------------------------


@dataclass
class Served:
    run: str
    url: str

    @property
    def port(self) -> int:
        port = urllib.parse.urlsplit(self.url).port
        assert port is not None, self.url
        return port

    @property
    def base(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def token(self) -> str:
        [token] = urllib.parse.parse_qs(urllib.parse.urlsplit(self.url).query)["token"]
        return token


def _logs(dstack: Dstack, run: str) -> str:
    proc = dstack("logs", run, expect=None)
    return (proc.stdout[-3000:] + "\n--- stderr\n" + proc.stderr[-3000:])


def wait_for_app(dstack: Dstack, run: str) -> str:
    """The app URL `dstack ps --json RUN` shows once the runner found the app ready."""
    def check() -> str | None:
        [row] = dstack.json("ps", run)
        if row["status"] in TERMINAL:
            pytest.fail(f"run {run} ended ({row['status']}: {row['message']}) before its app "
                        f"was ready; its log:\n{_logs(dstack, run)}")
        if row["apps"]:
            [url] = row["apps"]
            return str(url)
        return None
    return str(poll(f"the app of run {run} in `dstack ps --json`", check, APP_START_S,
                    every=0.5))


def run_detached(dstack: Dstack, *run_args: str) -> str:
    """`dstack run -d RUN_ARGS...` (`-d` first: after `--` it would go to the job); the run
    name it printed, the only line on stdout."""
    proc = dstack("run", "-d", *run_args)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and RUN_NAME.match(lines[0]), proc.stdout
    return lines[0]


@contextlib.contextmanager
def serving(dstack: Dstack, *run_args: str) -> Iterator[Served]:
    """`dstack run -d RUN_ARGS...`, waits for its app, yields it; then `dstack stop` and
    checks that the run stopped and left nothing behind."""
    run = run_detached(dstack, *run_args)
    try:
        served = Served(run, wait_for_app(dstack, run))
        assert served.url.startswith("http://127.0.0.1:"), served.url
        assert listen_addresses(served.port) == {"127.0.0.1"}, \
            f"the app must listen on the loopback address only: {listen_addresses(served.port)}"
        yield served
        assert_stops_cleanly(dstack, served)
    except BaseException:
        dstack("stop", run, "-y", expect=None, timeout=180)  # don't leave it running
        raise


def assert_stops_cleanly(dstack: Dstack, served: Served) -> None:
    """`dstack stop RUN -y`: stopped, port closed, no process, the stack holds nothing."""
    workdir = dstack.home / "workdirs" / served.run
    before = run_processes(workdir)
    assert any("dstack.runner" in cmd for _, cmd in before), before
    assert len(before) >= 2, f"expected the runner and the app, found {before}"
    assert answers(served.port)
    assert any(t.endswith("RunnerProcess") for t in dstack.stack_resource_types(served.run))

    proc = dstack("stop", served.run, "-y", timeout=180)
    assert f"{served.run} stopped" in proc.stderr, proc.stderr
    [row] = dstack.json("ps", served.run)
    assert row["status"] == "stopped", row
    assert row["apps"] == [], row
    assert not answers(served.port), f"port {served.port} still answers after the stop"
    left = run_processes(workdir)
    assert left == [], f"processes of run {served.run} left running: {left}"
    dstack.assert_torn_down(served.run)


# -- the apps --------------------------------------------------------------------------------


def chromium_dom(url: str, until: str = "", tries: int = 4) -> str:
    """The DOM of `url` after headless Chromium ran its JavaScript (a fresh profile each
    time), loaded again with more time while `until` is not in it yet: on a busy machine
    the page's requests may not all be answered within one virtual-time budget."""
    dom = ""
    for attempt in range(tries):
        with tempfile.TemporaryDirectory(prefix="dstack-test-chromium-") as profile:
            proc = subprocess.run(
                [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 f"--virtual-time-budget={15000 * (attempt + 1)}", "--dump-dom", url],
                capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        dom = proc.stdout
        if not until or until in dom:
            break
    return dom


def _post_json(url: str, doc: Any) -> Any:
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def _assert_streamlit_serves(app: Served) -> None:
    assert app.url == app.base + "/"
    health = get(app.base + "/_stcore/health")
    assert (health.status, health.body) == (200, "ok")
    page = get(app.url)
    assert page.status == 200
    assert "<title>Streamlit</title>" in page.body
    assert '<div id="root">' in page.body
    assert get(app.base + "/_stcore/host-config").status == 200


@pytest.mark.timeout(300)
@pytest.mark.parametrize("form, greeting", [
    (["st-app"], "Hello from the workflow file"),
    (["streamlit", "st_app.py", "--", "--greeting", "from the CLI"], "from the CLI"),
], ids=["workflow", "cli"])
def test_streamlit(dstack: Dstack, form: list[str], greeting: str) -> None:
    with serving(dstack, *form) as app:
        _assert_streamlit_serves(app)
        # Streamlit runs the script for a browser session, with the workflow's or the
        # command line's args. (How far the page got when Chromium dumps it varies, so the
        # page is loaded until the script's output shows up in the run's log.)
        line = f"greeting: {greeting}\n"
        poll(f"{line!r} in the log of {app.run} after a browser loaded the page",
             lambda: chromium_dom(app.url) and line in dstack("logs", app.run).stdout,
             timeout=60, every=0)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("form", [["gr-app"], ["gradio", "gr_app.py"]], ids=["workflow", "cli"])
def test_gradio(dstack: Dstack, form: list[str]) -> None:
    with serving(dstack, *form) as app:
        page = get(app.url)
        assert page.status == 200
        assert '"title":"dstack gradio probe"' in page.body  # the page's embedded config
        assert "window.gradio_config" in page.body
        config = get(app.base + "/config")
        assert config.status == 200
        assert config.json()["title"] == "dstack gradio probe"
        labels = {c.get("props", {}).get("label") for c in config.json()["components"]}
        assert {"dstack probe name", "dstack probe greeting"} <= labels, labels
        # The app's Python function answers through Gradio's HTTP API.
        call = _post_json(f"{app.base}/gradio_api/call/greet", {"data": ["dstack"]})
        events = get(f"{app.base}/gradio_api/call/greet/{call['event_id']}")
        assert events.status == 200
        assert 'event: complete\ndata: ["hi dstack"]' in events.body, events.body
        if form == ["gr-app"]:
            # In a browser: the page's JavaScript renders the components and shows what
            # the app's `load` handler returned from the server; none of it is in the HTML.
            assert "loaded by the server" not in page.body
            assert "<title>dstack gradio probe</title>" not in page.body
            assert 'data-testid="block-info"' not in page.body
            dom = chromium_dom(app.url, until="loaded by the server")
            assert "<p>loaded by the server: 42</p>" in dom, dom[-3000:]
            assert "<title>dstack gradio probe</title>" in dom, dom[:3000]
            assert re.search(r'data-testid="block-info"[^>]*>dstack probe greeting', dom), \
                dom[-3000:]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("form", [["api-app"], ["fastapi", "api:app"]], ids=["workflow", "cli"])
def test_fastapi(dstack: Dstack, form: list[str]) -> None:
    with serving(dstack, *form) as app:
        root = get(app.url)
        assert root.status == 200
        assert root.json() == {"app": "dstack-fastapi-probe", "run": app.run, "port": app.port}
        item = get(app.base + "/items/12")
        assert (item.status, item.json()) == (200, {"n": 12, "square": 144})
        assert get(app.base + "/items/twelve").status == 422
        docs = get(app.base + "/openapi.json")
        assert docs.status == 200 and "/items/{n}" in docs.json()["paths"]
        # The workflow's uvicorn options reach uvicorn: `no-server-header` drops the header.
        if form == ["api-app"]:
            assert "server" not in root.headers, root.headers
        else:
            assert root.headers.get("server") == "uvicorn", root.headers


def _assert_jupyter_lists_the_project(app: Served) -> None:
    contents = get(f"{app.base}/api/contents?token={app.token}")
    assert contents.status == 200, contents.body[:500]
    names = {item["name"] for item in contents.json()["content"]}
    assert {"st_app.py", "gr_app.py", "api.py", "data", "index.html"} <= names, names
    notes = get(f"{app.base}/api/contents/data/notes.txt?token={app.token}&content=1")
    assert notes.status == 200
    assert notes.json()["content"] == "files the jupyter server must list\n"


def _assert_jupyter_wants_the_token(app: Served, page: str) -> None:
    assert len(app.token) >= 16, app.url
    assert get(f"{app.base}/api/contents").status == 403
    assert get(f"{app.base}/api/contents?token=not-{app.token}").status == 403
    anonymous = get(app.base + page)
    assert anonymous.status == 302, anonymous.status
    assert anonymous.headers["location"].startswith("/login"), anonymous.headers


@pytest.mark.timeout(300)
@pytest.mark.parametrize("form", [["jl-app"], ["lab"]], ids=["workflow", "cli"])
def test_jupyterlab(dstack: Dstack, form: list[str]) -> None:
    with serving(dstack, *form) as app:
        assert app.url == f"{app.base}/lab?token={app.token}"
        page = get(app.url)
        assert page.status == 200
        assert "<title>JupyterLab</title>" in page.body
        assert '"appName": "JupyterLab"' in page.body
        _assert_jupyter_lists_the_project(app)
        _assert_jupyter_wants_the_token(app, "/lab")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("form", [["nb-app"], ["notebook"]], ids=["workflow", "cli"])
def test_notebook(dstack: Dstack, form: list[str]) -> None:
    with serving(dstack, *form) as app:
        assert app.url == f"{app.base}/tree?token={app.token}"
        page = get(app.url)
        assert page.status == 200
        assert '"appName": "Jupyter Notebook"' in page.body
        _assert_jupyter_lists_the_project(app)
        _assert_jupyter_wants_the_token(app, "/tree")


@pytest.mark.timeout(300)
def test_bash_workflow_serving_a_port(dstack: Dstack) -> None:
    with serving(dstack, "web") as app:
        assert app.url == app.base + "/"
        page = get(app.base + "/index.html")
        assert page.status == 200
        assert "served by http.server for dstack-bash-probe" in page.body
        assert get(app.base + "/no-such-file").status == 404
