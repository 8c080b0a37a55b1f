"""The README's walk-through works as printed, against a real ``genplane serve``.

What a new user does is replayed for real: ``genplane init --quickstart`` and
``genplane serve`` (what ``make run`` runs) start a server on a free loopback port (a
socket this test binds and the server inherits, so no other process can take it), and
the ```sh blocks of "A walk through the API with curl" run in order in one bash session
(``bash -e -o pipefail``), then those of "Managing accounts, keys and credits" run
against the same data directory. Only what a user fills in by hand is substituted:
the key, the port in ``$API``, ``<generation_id>``, ``<account_id>`` and ``<key_id>``.

The session defines one shell function, ``curl``, that calls the real curl with the
README's own arguments and also: ignores ``~/.curlrc`` and proxies, caps each request
at 10 s, refuses any URL that is not this test's loopback server, and reports each
HTTP status on stderr. Every status must be 2xx, except where the README's comment on
the line names one (the cancel of a terminal generation: ``# 409 once terminal``).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.serve_process import listening_socket, wait_ready

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STATUS_MARK = "__GP_HTTP__"
COMMAND_TIMEOUT = 20.0
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}

# Stands in for the prose step "Poll it until generation_status is succeeded (or failed /
# canceled)" between the image create and the content commands; it uses only the
# session's $API, $KEY and $GEN, and fails the session unless the generation succeeded.
POLL_UNTIL_TERMINAL = """\
for _ in $(seq 200); do
  state=$(curl -s $API/content/$GEN -H "Authorization: Bearer $KEY" \\
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["generation_status"])')
  case "$state" in succeeded|failed|canceled) break;; esac
  sleep 0.05
done
echo "$state"
test "$state" = succeeded"""


# --------------------------------------------------------------------------- README parsing


def section(heading: str) -> str:
    """The text under a '## ' heading, up to the next '## ' heading."""
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """Logical command lines of a block (a line ending in a backslash continues)."""
    result: list[str] = []
    current: list[str] = []
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        if not line.endswith("\\"):
            result.append("\n".join(current))
            current = []
    assert not current, f"unterminated continuation in:\n{block}"
    return result


def expected_status(command: str) -> int | None:
    """A status named in the line's comment (``# 409 once terminal``); None means any 2xx."""
    match = re.search(r"#\s*(\d{3})\b", command)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- processes


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Server:
    port: int
    key: str
    init_output: str
    env: dict[str, str]
    workdir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``make run`` without the install step: init --quickstart, then serve on loopback."""
    workdir = tmp_path_factory.mktemp("readme")
    # The README's CLI lines call `.venv/bin/genplane` from the checkout; the work
    # directory gets a `.venv` pointing at the running environment so they run verbatim
    # without writing into the checkout (`genplane openapi > openapi.yaml`, `out.png`).
    (workdir / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    listener = listening_socket()
    port: int = listener.getsockname()[1]
    # Nothing GENPLANE_* from the outer environment (no provider keys, no .env: the work
    # directory is fresh), so only the built-in local provider runs and nothing leaves
    # loopback; no proxy variables either, for curl and for the server.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GENPLANE_") and k.lower() not in PROXY_VARS
    }
    env.update(
        GENPLANE_DATA_DIR=str(workdir / "data"),
        GENPLANE_HOST="127.0.0.1",
        GENPLANE_PORT=str(port),
        GENPLANE_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        NO_PROXY="*",
    )
    init = subprocess.run(
        [str(BIN / "genplane"), "init", "--quickstart"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    match = re.search(r"^(bye_us_\S+)$", init.stdout, flags=re.MULTILINE)
    assert match, f"no key in the output of genplane init --quickstart:\n{init.stdout}"

    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "genplane"), "serve", "--fd", str(listener.fileno())],
        cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        pass_fds=(listener.fileno(),),
    )
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc, timeout=20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(workdir / 'serve.log').read_text()}") from None
        yield Server(port, match.group(1), init.stdout, env, workdir)
    finally:
        _stop(proc)
        log.close()
        listener.close()


@dataclass
class Step:
    command: str
    stdout: str
    stderr: str
    statuses: list[int] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.stdout)


class Shell:
    """One ``bash -e -o pipefail`` session fed one command at a time, with a deadline each.

    Each command's stdout and stderr go to files; the session's own stdout only carries
    a marker after each command, so a command that fails (``-e`` ends the session) or
    hangs is reported with the command and what it printed.
    """

    def __init__(self, cwd: Path, env: dict[str, str], port: int) -> None:
        self.dir = cwd / f"shell-{time.monotonic_ns()}"
        self.dir.mkdir()
        self.count = 0
        self.proc = subprocess.Popen(
            ["/bin/bash", "--noprofile", "--norc", "-e", "-o", "pipefail"],
            cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(self.dir / "bash.err").open("w"), text=True, bufsize=1,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        loopback = f"http://127.0.0.1:{port}/"
        self._send(
            "curl() {\n"
            '  local a\n  for a in "$@"; do\n'
            f'    case "$a" in {loopback}*) ;; *://*) echo "refused: $a" >&2; return 97;; esac\n'
            "  done\n"
            "  command curl -q --noproxy '*' --max-time 10"
            f" -w '%{{stderr}}{STATUS_MARK} %{{http_code}}\\n' \"$@\"\n"
            "}"
        )

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _send(self, command: str) -> tuple[Path, Path]:
        assert self.proc.stdin is not None
        self.count += 1
        out, err = self.dir / f"{self.count}.out", self.dir / f"{self.count}.err"
        self.proc.stdin.write(
            f"{{\n{command}\n}} </dev/null >{shlex.quote(str(out))} 2>{shlex.quote(str(err))}\n"
            f"echo __GP_DONE__ {self.count}\n"
        )
        self.proc.stdin.flush()
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                os.killpg(self.proc.pid, signal.SIGKILL)
                raise AssertionError(
                    f"timed out after {COMMAND_TIMEOUT} s:\n{command}\n{self._printed(out, err)}"
                ) from None
            if line is None:
                code = self.proc.wait(timeout=5)
                raise AssertionError(
                    f"bash -e stopped (exit {code}) at:\n{command}\n{self._printed(out, err)}"
                    f"bash: {(self.dir / 'bash.err').read_text()}"
                )
            if line == f"__GP_DONE__ {self.count}":
                return out, err

    @staticmethod
    def _printed(out: Path, err: Path) -> str:
        text = out.read_text() if out.exists() else ""
        return f"stdout: {text[:2000]}\nstderr: {err.read_text() if err.exists() else ''}\n"

    def run(self, command: str) -> Step:
        out, err = self._send(command)
        stderr = err.read_text()
        statuses = [int(s) for s in re.findall(rf"^{STATUS_MARK} (\d{{3}})$", stderr, flags=re.MULTILINE)]
        return Step(command, out.read_text(), stderr, statuses)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("exit 0\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


@pytest.fixture
def shell(server: Server) -> Iterator[Shell]:
    sh = Shell(server.workdir, server.env, server.port)
    try:
        yield sh
    finally:
        sh.close()


def check_http(step: Step) -> None:
    """Every curl in the command answered the expected status, with the matching envelope."""
    calls = len(re.findall(r"\bcurl\s", step.command))
    assert len(step.statuses) == calls, f"{step.command}\nstderr: {step.stderr}"
    want = expected_status(step.command)
    for status in step.statuses:
        ok = status == want if want is not None else 200 <= status < 300
        assert ok, f"HTTP {status} (want {want or '2xx'}) from:\n{step.command}\n{step.stdout}"
    if step.stdout.strip():
        body = step.json()
        assert body["status"] == ("success" if want is None else "error"), (step.command, body)


# --------------------------------------------------------------------------- tests


def test_quick_start_begins_with_make_run_and_make_test() -> None:
    blocks = sh_blocks(section("Quick start"))
    assert blocks, "no ```sh block under Quick start"
    first = commands(blocks[0])
    assert [c.split("#")[0].strip() for c in first[:2]] == ["make run", "make test"]
    # What the walk-through below starts is exactly what `make run` runs after installing.
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    assert recipe, "no run target in the Makefile"
    assert [line.strip() for line in recipe.group(1).splitlines()] == [
        "$(BIN)/genplane init --quickstart",
        "$(BIN)/genplane serve",
    ]


def test_make_run_output_is_as_shown(server: Server) -> None:
    sample = section("Quick start").split("`make run` prints something like:", 1)[1]
    sample = sample.split("```\n", 2)[1]
    shown_scopes = re.search(r"^scopes: (.*)$", sample, flags=re.MULTILINE)
    assert shown_scopes
    out = " ".join(server.init_output.split())  # rich wraps long lines at the terminal width
    assert re.search(rf"account: {UUID} \(Default account\)", out), server.init_output
    assert re.search(rf"key id: {UUID}", out), server.init_output
    printed_scopes = re.search(r"scopes: (.*?) API key \(shown once, store it now\):", out)
    assert printed_scopes, server.init_output
    assert printed_scopes.group(1).split(", ") == shown_scopes.group(1).split(", ")
    # "Keys look like bye_<region>_<43 characters>"
    assert re.fullmatch(r"bye_us_[A-Za-z0-9_-]{43}", server.key)


def test_curl_walkthrough_works_as_printed(server: Server, shell: Shell) -> None:
    blocks = sh_blocks(section("A walk through the API with curl"))
    assert len(blocks) >= 6, "the walk-through lost some of its ```sh blocks"
    generation_id: str | None = None
    seen = {"KEY": False, "API": False, "GEN": False}
    steps: list[Step] = []
    for block in blocks:
        for command in commands(block):
            if command.startswith("export KEY="):
                assert re.match(r"export KEY=bye_us_\.\.\.\s", command), command
                command = command.replace("bye_us_...", server.key, 1)
                seen["KEY"] = True
            elif command.startswith("export API="):
                assert command.startswith("export API=http://127.0.0.1:8000/v1"), command
                command = command.replace(":8000/", f":{server.port}/", 1)
                seen["API"] = True
            elif command.startswith("export GEN="):
                assert command == "export GEN=<generation_id>", command
                assert generation_id, "the README sets GEN before creating a generation"
                shell.run(f"export GEN={generation_id}")
                poll = shell.run(POLL_UNTIL_TERMINAL)
                assert poll.stdout.strip() == "succeeded"
                assert set(poll.statuses) == {200}, poll.stderr
                seen["GEN"] = True
                continue
            assert not re.search(r"<[a-z_]+>", command), f"unfilled placeholder in:\n{command}"
            step = shell.run(command)
            steps.append(step)
            if "curl" in command:
                check_http(step)
            if "/generate/image/" in command:
                generation_id = step.json()["data"]["generation_id"]
    assert all(seen.values()), seen

    # The documented answers, beyond "2xx and a success envelope".
    by_path = {re.sub(r"\s+", " ", s.command): s for s in steps}
    record = next(s for c, s in by_path.items() if c.startswith("curl -s $API/content/$GEN "))
    files = record.json()["data"]["generation_output_file"]
    assert record.json()["data"]["generation_status"] == "succeeded"
    assert len(files) == 2 and all(f.startswith(f"{server.base}/files/") for f in files)
    cancel = next(s for c, s in by_path.items() if "/cancel/" in c)
    assert cancel.statuses == [409] and cancel.json()["error"] == "bse_generation_not_cancelable"
    delete = next(s for c, s in by_path.items() if "-X DELETE" in c)
    assert delete.json()["data"]["generation_id"] == generation_id

    # `curl -s -o out.png "$(…)"` saved the first stored output: a 16:9 PNG.
    png = server.workdir / "out.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width * 9 == image.height * 16, image.size


def test_account_key_and_credit_commands_work_as_printed(server: Server, shell: Shell) -> None:
    blocks = sh_blocks(section("Managing accounts, keys and credits"))
    assert blocks, "no ```sh block under Managing accounts, keys and credits"
    ids: dict[str, str] = {}
    steps: list[Step] = []
    for block in blocks:
        for command in commands(block):
            assert command.startswith(".venv/bin/genplane "), command
            for placeholder, value in ids.items():
                command = command.replace(f"<{placeholder}>", value)
            assert not re.search(r"<[a-z_]+>", command), f"no id yet for:\n{command}"
            step = shell.run(command)  # bash -e: a non-zero exit fails here, with the output
            steps.append(step)
            flat = " ".join(step.stdout.split())
            if command.startswith(".venv/bin/genplane accounts create"):
                found = re.search(rf"account created: ({UUID})", flat)
                assert found, step.stdout
                ids["account_id"] = found.group(1)
            elif command.startswith(".venv/bin/genplane keys create"):
                found = re.search(rf"key id: ({UUID})", flat)
                assert found, step.stdout
                ids["key_id"] = found.group(1)
    assert set(ids) == {"account_id", "key_id"}

    joined = "\n".join(s.command for s in steps)
    start = re.search(r"accounts create .*--credits (\S+)", joined)
    added = re.search(r"credits add --account \S+ (\S+)", joined)
    assert start and added
    balance = next(s for s in steps if " credits add " in s.command)
    assert f"balance: {Decimal(start.group(1)) + Decimal(added.group(1)):.3f}" in balance.stdout
    assert any(f"key revoked: {ids['key_id']}" in s.stdout for s in steps)
    catalogue = next(s for s in steps if s.command.startswith(".venv/bin/genplane models"))
    assert "local/preview-image" in catalogue.stdout
    assert (server.workdir / "openapi.yaml").read_text().startswith("openapi: 3.0.3")
