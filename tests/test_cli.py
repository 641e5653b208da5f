"""Bad invocations of the `boxgym` command: one line naming cause and fix, exit 2, no traceback,
and nothing already done lost. Each case runs the real CLI as a subprocess.

Servers are loopback stubs (127.0.0.1) bounded in time.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)

pytestmark = pytest.mark.slow


def boxgym(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boxgym.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kwargs.pop("env", ENV),
        **kwargs,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, and a last stderr line `error: ...` holding every needle."""
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-3000:]
    assert done.returncode == 2, output[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(("error:", "boxgym data", "usage:")) or "error:" in last, last
    for needle in needles:
        assert needle in last, (needle, last)
    return last


def stored(run_dir: Path) -> list[dict]:
    """The episodes a reader gets back (a torn last line, left by a failed write, dropped)."""
    from boxgym.rollouts.store import read_episodes

    return read_episodes(run_dir).episodes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ANSWER = '<tool_call>\n{"name": "answer", "arguments": {"count": 1, "items": ["tv"]}}\n</tool_call>'
BIG_NUMBER = (
    '<tool_call>{"name": "draw_box", "arguments": {"x1": ' + "9" * 5000 + ', "y1": 1, "x2": 3, '
    '"y2": 4, "label": "a"}}</tool_call>'
)


class FakeServer:
    """A loopback chat-completions server whose behaviour is `mode`:

    ok: answers every request with an `answer` call; 500: HTTP 500; html: a 200 that is not
    JSON; trickle: a 200 whose body comes one byte per 0.2 s (for at most 60 s); die: the first
    `answer_first` requests are answered, then 500; bigint: a draw_box call with a 5000-digit
    number, then an answer; surrogate: a reply with a lone surrogate, then an answer.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.answer_first = 3
        self.requests = 0
        lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    fake.requests += 1
                    number = fake.requests
                mode = fake.mode
                if mode == "500" or (mode == "die" and number > fake.answer_first):
                    return self.reply(500, b'{"error": {"message": "boom"}}')
                if mode == "html":
                    return self.reply(200, b"<html>not an API</html>", "text/html")
                if mode == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(300):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:
                        pass
                    return None
                turns = sum(1 for m in body["messages"] if m["role"] == "assistant")
                text = ANSWER
                if mode == "bigint" and turns == 0:
                    text = BIG_NUMBER
                if mode == "surrogate" and turns == 0:
                    text = "I see \ud83d screens"
                message = {"role": "assistant", "content": text}
                payload = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
                # json.dumps writes the lone surrogate as the escape \ud83d, as a server would
                return self.reply(200, json.dumps(payload).encode())

            def reply(self, code, data, content_type="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server():
    fake = FakeServer()
    yield fake
    fake.close()


def openai_run(server: FakeServer, out: Path, *extra: str) -> list[str]:
    return ["rollout", "--policy", "openai", "--base-url", server.url, "--model", "m",
            "--n", "6", "--group-size", "1", "--no-progress", "--out", out,
            "--max-retries", "0", "--timeout", "5", *extra]  # fmt: skip


# ------------------------------------------------------------------------------- servers


def test_unreachable_server(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    done = boxgym("rollout", "--policy", "openai", "--base-url", url, "--n", "2", "--no-progress",
                  "--max-retries", "0", "--out", tmp_path / "r")  # fmt: skip
    assert_one_line_error(done, url, "is the server running", "--resume")


@pytest.mark.parametrize(
    ("mode", "needle"),
    [("500", "rejected the request (500"), ("html", "not a chat completion")],
)
def test_server_errors(server, tmp_path, mode, needle):
    server.mode = mode
    assert_one_line_error(boxgym(*openai_run(server, tmp_path / "r")), needle)


def test_trickling_server_meets_the_whole_request_deadline(server, tmp_path):
    server.mode = "trickle"
    start = time.monotonic()
    done = boxgym(*openai_run(server, tmp_path / "r", "--timeout", "1", "--n", "1"))
    assert_one_line_error(done, "did not answer in time")
    assert time.monotonic() - start < 45  # the body would take 60 s; the deadline is 1 s


def test_server_dying_mid_turn_keeps_finished_episodes(server, tmp_path):
    server.mode, server.requests = "die", 0
    out = tmp_path / "r"
    done = boxgym(*openai_run(server, out, "--max-concurrency", "1"))
    assert_one_line_error(done, "3/6 episodes are stored", "--resume")
    assert len(stored(out)) == 3
    server.mode = "ok"
    done = boxgym(*openai_run(server, out, "--max-concurrency", "1", "--resume"))
    assert done.returncode == 0, done.stderr
    keys = [r["key"]["task_id"] for r in stored(out)]
    assert len(keys) == 6 and len(set(keys)) == 6


def test_huge_number_in_a_tool_call_is_an_ordinary_tool_error(server, tmp_path):
    server.mode = "bigint"
    out = tmp_path / "r"
    done = boxgym(*openai_run(server, out, "--n", "2"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    for record in stored(out):
        assert record["failure"] != "env_error"
        first = json.dumps(record["turns"][0])
        assert "too many digits" in first


def test_lone_surrogate_in_a_reply_is_stored_viewed_and_resumed(server, tmp_path):
    server.mode = "surrogate"
    out = tmp_path / "r"
    done = boxgym(*openai_run(server, out, "--n", "2"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    records = stored(out)
    assert len(records) == 2 and "\ufffd" in records[0]["turns"][0]["assistant"]
    assert boxgym("view", out).returncode == 0
    again = boxgym(*openai_run(server, out, "--n", "2", "--resume"))
    assert again.returncode == 0 and len(stored(out)) == 2


# ------------------------------------------------------------------------------- run folders


def test_read_only_output_folder():
    assert_one_line_error(boxgym("episodes", "--n", "1", "--out", "/sys/boxgym-test"), "/sys")


def test_output_path_below_a_file():
    assert_one_line_error(boxgym("episodes", "--n", "1", "--out", "/dev/null/run"), "/dev/null")


def _small_file_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails: EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_full_disk_keeps_what_was_stored(tmp_path):
    out = tmp_path / "r"
    done = boxgym("episodes", "--scene", "clutter", "--n", "8", "--out", out, "--no-progress",
                  preexec_fn=_small_file_limit)  # fmt: skip
    assert_one_line_error(done, "free space")
    before = stored(out)  # whatever was stored is intact and readable
    done = boxgym("episodes", "--scene", "clutter", "--n", "8", "--out", out, "--no-progress",
                  "--resume")  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = stored(out)
    assert len(after) == 8 and [r["key"] for r in after[: len(before)]] == [
        r["key"] for r in before
    ]


def test_two_runs_on_one_folder(tmp_path):
    out = tmp_path / "r"
    args = ["episodes", "--n", "6", "--max-live", "1", "--no-progress", "--out", out]
    first = subprocess.Popen(
        [sys.executable, "-m", "boxgym.cli", *map(str, args), "--policy-delay", "0.4"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (out / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = boxgym(*args, "--resume", "--policy-delay", "0.4")
        assert_one_line_error(second, "another boxgym run is writing")
        assert first.wait(timeout=60) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    keys = [r["key"]["task_id"] for r in stored(out)]
    assert len(keys) == 6 and len(set(keys)) == 6


def test_record_with_empty_key_in_view_and_resume(tmp_path):
    out = tmp_path / "r"
    assert boxgym("episodes", "--n", "3", "--out", out, "--no-progress").returncode == 0
    lines = (out / "episodes.jsonl").read_text().splitlines()
    (out / "episodes.jsonl").write_text("\n".join([lines[0], '{"key": {}}', *lines[2:]]) + "\n")
    view = boxgym("view", out)
    assert view.returncode == 0 and "Traceback" not in view.stderr
    assert "skipped 1 unparseable" in view.stderr
    done = boxgym("episodes", "--n", "3", "--out", out, "--no-progress", "--resume")
    assert done.returncode == 0, done.stderr
    assert {r["key"]["task_id"] for r in stored(out) if r["key"]} == {
        json.loads(line)["key"]["task_id"] for line in lines
    }


def test_corrupt_run_json_on_resume(tmp_path):
    out = tmp_path / "r"
    assert boxgym("episodes", "--n", "1", "--out", out, "--no-progress").returncode == 0
    (out / "run.json").write_text('{"policy": "ora')
    assert_one_line_error(
        boxgym("episodes", "--n", "1", "--out", out, "--resume"), "run.json", "--overwrite"
    )


BAD_ARGUMENTS = [
        (["episodes", "--scene", "planets", "--out", "{out}"], "unknown scene family"),
        (["episodes", "--n", "0", "--out", "{out}"], "--n must be between 1 and"),
        (["episodes", "--group-size", "0", "--out", "{out}"], "--group-size must be between 1 and"),
        (["episodes", "--n", "1", "--max-turns", "0", "--out", "{out}"], "max_turns"),
        (["episodes", "--resume", "--overwrite", "--out", "{out}"], "contradict"),
        (["view", "{out}"], "no episodes.jsonl"),
        (["eval", "--suite", "no-such-suite", "--out", "{out}"], "unknown suite"),
        (["eval", "--out", "{out}"], "--suite NAME or --tasks"),
        (["rollout", "--policy", "hf", "--model", "/no/such/model", "--out", "{out}"], "no model at"),
        (["train", "sft", "--config", "/no/such.yaml", "--dry-run"], "/no/such.yaml"),
        (["data", "gallery", "--dataset", "nlvr2", "--path", "/no/such", "--out", "{out}"], "does not exist"),
        (["data", "gallery", "--dataset", "no-such-data", "--out", "{out}"], "unknown dataset"),
        (["playground", "--image", "/no/such.png", "How many?"], "/no/such.png"),
        (["episodes", "--tasks", "/no/such/folder", "--out", "{out}"], "no such file or folder"),
        (["episodes", "--tasks", "{tmp}", "--out", "{out}"], "no metadata.jsonl"),
        (["episodes", "--tasks", "{tmp}", "--columns", "cnt", "--out", "{out}"], "FIELD=COLUMN"),
        (["scenes", "--family", "planets", "--out", "{out}"], "planets"),
        (["train", "sft", "--set", "trainer.learning_rat=1e-4", "--dry-run"], "did you mean 'learning_rate'"),
        (["train", "sft", "--set", "trainer.max_steps=ten", "--dry-run"], "trainer.max_steps"),
        (["train", "grpo", "--set", "lora.rank=8.5", "--dry-run"], "lora.rank"),
        (["train", "grpo", "--set", "lora.rank=eight", "--dry-run"], "lora.rank"),
        (["train", "grpo", "--set", "lora.rnak=8", "--dry-run"], "did you mean 'rank'"),
        (["train", "sft", "--set", "mixture.weights={smol2operator: 1}", "--dry-run"], "unknown sources"),
        (["train", "sft", "--set", "trainer=5", "--dry-run"], "trainer"),
        (["episodes", "--config", "configs/grpo_tiny.yaml", "--set", "env.env_kwargs.max_turn=3", "--out", "{out}"], "did you mean 'max_turns'"),
        (["rollout", "--set", "decoding.temperature=-1", "--out", "{out}"], "decoding.temperature"),
        (["eval", "--config", "/no/such.yaml", "--out", "{out}"], "does not exist"),
        (["episodes", "--set", "env.reward_kwargs.count_exactly=2", "--out", "{out}"], "did you mean 'count_exact'"),
        (["episodes", "--n", "2", "--shard", "4/4", "--out", "{out}"], "--shard i/n with 0 <= i < n"),
        (["rollout", "--policy", "oracle", "--n", "2", "--shard", "a/b", "--out", "{out}"], "--shard i/n"),
        (["eval", "--suite", "screens-easy", "--limit", "1", "--shard", "0/0", "--out", "{out}"], "--shard i/n"),
]  # fmt: skip

# Runs each argv through `boxgym.cli.main` in one interpreter (one start-up instead of one per
# case); an exception escaping `main` is printed as a traceback, which the test looks for.
_BATCH = """
import contextlib, io, json, sys, traceback
from boxgym.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        except BaseException:
            traceback.print_exc()
            code = None
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def test_bad_arguments(tmp_path):
    cases = [
        (
            [
                a.replace("{out}", str(tmp_path / f"run{i}")).replace("{tmp}", str(tmp_path))
                for a in args
            ],
            needle,
        )
        for i, (args, needle) in enumerate(BAD_ARGUMENTS)
    ]
    done = subprocess.run(
        [sys.executable, "-c", _BATCH, json.dumps([argv for argv, _ in cases])],
        capture_output=True,
        text=True,
        timeout=600,  # 35 cases in one interpreter; minutes on a loaded 2-core machine
        env=ENV,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (argv, needle), result in zip(cases, results):
        assert_one_line_error(
            subprocess.CompletedProcess(argv, result["code"], result["stdout"], result["stderr"]),
            needle,
        )


def test_refuses_a_non_empty_folder_and_keeps_it(tmp_path):
    out = tmp_path / "r"
    assert boxgym("episodes", "--n", "2", "--out", out, "--no-progress").returncode == 0
    before = (out / "episodes.jsonl").read_bytes()
    assert_one_line_error(boxgym("episodes", "--n", "2", "--out", out), "--resume")
    assert_one_line_error(
        boxgym("episodes", "--n", "3", "--out", out, "--resume"), "configuration differs"
    )
    assert (out / "episodes.jsonl").read_bytes() == before


def test_debug_shows_the_traceback(tmp_path):
    done = boxgym("--debug", "episodes", "--scene", "planets", "--out", tmp_path / "r")
    assert "Traceback" in done.stderr and done.returncode != 0
    done = boxgym("episodes", "--scene", "planets", "--out", tmp_path / "r", "--debug")
    assert "Traceback" in done.stderr


# ------------------------------------------------------------------------------- your tasks


def _photos(folder: Path) -> None:
    folder.mkdir()
    rows = []
    for i in range(4):
        Image.new("RGB", (120, 90), (40 * i, 90, 90)).save(folder / f"tv_{i}.jpg")
        rows.append({"file_name": f"tv_{i}.jpg", "n_screens": i + 1, "object": "screens"})
    Image.new("RGB", (1000, 2)).save(folder / "thin.png")
    rows += [
        {"file_name": "thin.png", "n_screens": 2},
        {"file_name": "tv_0.jpg", "photo": "huge", "n_screens": 10**12},
        {"file_name": "gone.jpg", "n_screens": 1},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, "{not json")
    lines.append('{"file_name": "tv_1.jpg", "n_screens": ' + "9" * 5000 + "}")
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_tasks_folder_skips_bad_rows_and_counts_them(tmp_path):
    _photos(tmp_path / "photos")
    out = tmp_path / "r"
    done = boxgym("episodes", "--tasks", tmp_path / "photos", "--columns", "count=n_screens,id=photo",
                  "--out", out, "--no-progress")  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert sorted(r["task"]["id"] for r in stored(out)) == [f"tv_{i}" for i in range(4)]
    note = next(line for line in done.stderr.splitlines() if line.startswith("tasks:"))
    for reason in ("bad JSON line: 2", "image aspect ratio over 200: 1", "count outside",
                   "missing image: 1"):  # fmt: skip
        assert reason in note, note


def test_corrupt_parquet_loses_only_its_bad_row_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "p"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), "white").save(folder / f"im{i}.png")
    table = pa.table({"file_name": [f"im{i}.png" for i in range(4)], "count": [1, 2, 3, 4]})
    path = folder / "tasks.parquet"
    pq.write_table(table, path, row_group_size=2)
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = meta.data_page_offset
    data[start + 8 : start + 40] = b"\xff" * 32  # damage the first row group's first page
    path.write_bytes(bytes(data))
    done = boxgym("episodes", "--tasks", path, "--out", tmp_path / "r", "--no-progress")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert sorted(r["task"]["id"] for r in stored(tmp_path / "r")) == ["im2", "im3"]
    assert "unreadable parquet rows: 2" in done.stderr


def test_tasks_with_no_usable_row(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"file_name": "nope.png", "count": 1}\n{oops\n')
    assert_one_line_error(
        boxgym("episodes", "--tasks", tmp_path / "t.jsonl", "--out", tmp_path / "r"),
        "no usable task",
        "missing image: 1",
        "bad JSON line: 1",
    )


# ------------------------------------------------------------------------------- configs


def test_yaml_with_a_tab(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n\tmax_steps: 3\n")
    assert_one_line_error(boxgym("train", "sft", "--config", config, "--dry-run"), "line 2")


def test_run_config_feeds_the_run_verbs(tmp_path):
    out = tmp_path / "r"
    done = boxgym("episodes", "--config", REPO / "configs/grpo_tiny.yaml", "--n", "2", "--set",
                  "env.reward_kwargs.count_exact=2.5", "--no-progress", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["tasks"]["scenes"] == ["shapes"]  # env.family of the training config
    assert run["tasks"]["scene_knobs"]["image_size"] == 224
    assert run["env"]["max_turns"] == 3 and run["env"]["reward"]["count_exact"] == 2.5
    for record in stored(out):
        assert record["task"]["image_sizes"] == [[224, 224]]
    config = tmp_path / "c.yaml"
    config.write_text("env:\n\tfamily: shapes\n")
    assert_one_line_error(boxgym("episodes", "--config", config, "--out", tmp_path / "x"), "tabs")


def test_grpo_finds_the_sft_adapter_of_its_run(tmp_path):
    done = boxgym("train", "grpo", "--config", REPO / "configs/grpo_tiny.yaml", "--run-dir",
                  tmp_path / "mine", "--dry-run")  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["init_adapter"] == str(tmp_path / "mine" / "sft" / "adapter")
    assert config["trainer"]["output_dir"] == str(tmp_path / "mine" / "grpo")


def test_quick_tour_verbs_without_torch_say_what_to_install(tmp_path):
    """In `make demo`'s core environment (no torch), each model verb says what to install."""
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    argvs = [
        ["tiny-model", "--out", str(tmp_path / "tiny")],
        ["playground", "--image", str(tmp_path / "photo.png"), "hi"],
        ["rollout", "--policy", "hf", "--n", "1", "--out", str(tmp_path / "hf")],
        ["train", "sft", "--config", str(REPO / "configs/sft_tiny.yaml")],
    ]
    blocked = ("torch", "torchvision", "transformers", "trl", "peft", "accelerate")
    code = (
        "import sys, json, contextlib, io\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # as if not installed\n"
        "from boxgym.cli import main\n"
        "out = []\n"
        f"for argv in {argvs!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = main(argv)\n"
        "    out.append([code, err.getvalue()])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=ENV)  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for argv, (code, err) in zip(argvs, json.loads(done.stdout.strip().splitlines()[-1])):
        last = err.strip().splitlines()[-1]
        assert code == 2 and "Traceback" not in err, (argv, err)
        assert "pip install -c constraints.txt -e '.[" in last, (argv, last)
