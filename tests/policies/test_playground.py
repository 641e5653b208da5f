from __future__ import annotations

import argparse
import hashlib
import json

from PIL import Image

from boxgym.policies import playground


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    playground.add_arguments(parser, "playground")
    return parser.parse_args(argv)


def test_one_prompt_is_answered_and_appended_to_the_log(tiny_model_path, tmp_path, capsys):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (56, 56), "red").save(first)
    Image.new("RGB", (84, 56), "blue").save(second)
    log = tmp_path / "log" / "play.jsonl"
    argv = [
        "How many screens?",
        "--model",
        str(tiny_model_path),
        "--image",
        str(first),
        "--image",
        str(second),
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
        "--max-new-tokens",
        "5",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--log",
        str(log),
    ]
    assert playground.run(parse(argv)) == 0
    assert playground.run(parse(argv)) == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert record["model"] == str(tiny_model_path)
    assert record["prompt"] == "How many screens?"
    assert (record["temperature"], record["top_p"], record["max_new_tokens"], record["seed"]) == (
        0.7,
        0.9,
        5,
        3,
    )
    assert record["images"] == [
        {"path": str(first), "sha256": hashlib.sha256(first.read_bytes()).hexdigest()},
        {"path": str(second), "sha256": hashlib.sha256(second.read_bytes()).hexdigest()},
    ]
    assert record["response"] == json.loads(lines[1])["response"]  # same seed, same reply
    assert record["time"].endswith("+00:00") and record["seconds"] >= 0
    assert record["response"] in capsys.readouterr().out


def test_missing_or_bad_image_is_a_clear_error(tmp_path, capsys):
    log = tmp_path / "play.jsonl"
    assert (
        playground.run(parse(["hi", "--image", str(tmp_path / "nope.png"), "--log", str(log)])) == 2
    )
    assert "no such image file" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not an image")
    assert (
        playground.run(parse(["hi", "--image", str(tmp_path / "bad.png"), "--log", str(log)])) == 2
    )
    assert "not a readable image" in capsys.readouterr().err
    assert not log.exists()


def test_messages_follow_the_shared_format():
    image = Image.new("RGB", (28, 28))
    messages = playground.build_messages("Count.", [image], "Be brief.")
    assert messages == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "Count."}],
        },
    ]


def test_tool_loop_on_your_image_writes_the_episode_page(tiny_model_path, tmp_path, capsys):
    from boxgym.rollouts.store import read_episodes

    photo = tmp_path / "tv.png"
    Image.new("RGB", (96, 64), "green").save(photo)
    out = tmp_path / "run"
    argv = ["How many screens are there?", "--tools", "--image", str(photo), "--count", "2",
            "--model", str(tiny_model_path), "--max-new-tokens", "4", "--max-turns", "2",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert playground.run(parse(argv)) == 0
    (record,) = read_episodes(out).episodes
    assert record["task"]["id"] == "tv" and record["task"]["answer"] == {"count": 2}
    assert 1 <= len(record["turns"]) <= 2  # the env ran the loop (answered or truncated)
    assert (out / "index.html").is_file() and "page:" in capsys.readouterr().out
