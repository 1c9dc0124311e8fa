"""Chat datasets: good files load with their digest, every bad line is named with its fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from podium.errors import InvalidInput
from podium.finetune.dataset import MAX_REPORTED, load_dataset


def conversation(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}]})


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_good_file_loads_every_conversation_with_the_digest_of_its_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, [conversation("Hi", "Hello!"), "", conversation("Bye", "See you.")])
    dataset = load_dataset(path)
    assert [c[-1]["content"] for c in dataset.conversations] == ["Hello!", "See you."]
    assert dataset.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("line", "expected"), [
    ('{"messages": [', "line 2: is not valid JSON"),
    ('["Hi"]', 'line 2: has no "messages" field; write each line like'),
    ('{"messages": []}', 'line 2: "messages" is [], not a non-empty list'),
    ('{"messages": [{"role": "bot", "content": "x"}]}',
     "line 2: messages[0].role is \"bot\"; use one of: system, user, assistant."),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}',
     'line 2: messages[1].content is " "; give the message text as a non-empty string.'),
    ('{"messages": [{"role": "user"}]}', "line 2: messages[0].content is missing"),
    ('{"messages": [{"role": "user", "content": "Hi"}]}',
     'line 2: has no "assistant" message; add the answer the adapter should learn.'),
])
def test_a_bad_line_is_refused_naming_its_number_and_the_fix(tmp_path: Path, line: str,
                                                             expected: str) -> None:
    path = write(tmp_path, [conversation("Hi", "Hello!"), line, conversation("Bye", "See you.")])
    with pytest.raises(InvalidInput) as refused:
        load_dataset(path)
    assert str(refused.value).startswith(f"{path} {expected}"), str(refused.value)
    assert refused.value.exit_code == 2
    assert "\n" not in str(refused.value)


def test_every_bad_line_gets_its_own_sentence_and_a_long_tail_is_counted(tmp_path: Path) -> None:
    lines = [conversation("Hi", "Hello!")] + ["not json"] * (MAX_REPORTED + 3)
    with pytest.raises(InvalidInput) as refused:
        load_dataset(write(tmp_path, lines))
    sentences = str(refused.value).splitlines()
    assert [s.split(":")[0].rsplit(" ", 1)[1] for s in sentences[:MAX_REPORTED]] == [
        str(n) for n in range(2, MAX_REPORTED + 2)]
    assert sentences[-1].endswith("3 more bad lines like these.")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_bytes(conversation("Hi", "Hello!").encode() + b"\n\xff\xfe\n")
    with pytest.raises(InvalidInput, match="line 2: is not UTF-8 text; save the file as UTF-8"):
        load_dataset(path)


def test_an_empty_or_missing_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="holds no conversation; write one per line"):
        load_dataset(write(tmp_path, ["", "  "]))
    with pytest.raises(InvalidInput, match="cannot be read .* give a chat JSONL file"):
        load_dataset(tmp_path / "absent.jsonl")
