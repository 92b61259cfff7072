"""The unified id space and the task templates."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from arm.model.data import EvalBatches, TaskMixBatches, TaskRecords
from arm.model.sequences import (IGNORE, build_sequence, editing_sequence, reading_sequence, understanding_sequence,
                                 understanding_turns, understanding_turns_prefix)
from arm.model.vocab import Vocab
from arm.text_tokenizer import SPECIAL_TOKENS, train_bpe


@pytest.fixture(scope="module")
def vocab():
    tok = train_bpe(["a red circle at the top left", "what color is the circle?", "red"] * 10, vocab_size=300)
    return Vocab.from_tokenizer(tok, codebook_size=1000)


def test_id_space_is_text_then_specials_then_image_codes(vocab):
    specials = [vocab[t] for t in SPECIAL_TOKENS]
    assert specials == list(range(vocab.text_size - len(SPECIAL_TOKENS), vocab.text_size))
    assert vocab.image_offset == vocab.text_size and vocab.size == vocab.text_size + 1000
    assert vocab.code_of(vocab.image_id(123)) == 123


def test_loss_only_on_targets(vocab):
    ids, labels = understanding_sequence(vocab, [1, 2, 3, 4], [7, 8], [9])
    assert len(ids) == len(labels)
    targets = [i for i, l in zip(ids, labels) if l != IGNORE]
    assert targets == [9, vocab["<|eos|>"]]
    assert all(l == i for i, l in zip(ids, labels) if l != IGNORE)


def test_editing_layout_and_source_dropout(vocab):
    ids, labels = editing_sequence(vocab, [1, 2], [5], [3, 4])
    assert ids[:4] == [vocab["<|edit|>"], vocab["<|soi|>"], vocab.image_id(1), vocab.image_id(2)]
    assert [l for l in labels if l != IGNORE] == [vocab.image_id(3), vocab.image_id(4), vocab["<|eoi|>"]]
    dropped, _ = editing_sequence(vocab, None, [5], [3, 4])
    assert dropped[:3] == [vocab["<|edit|>"], vocab["<|soi|>"], vocab["<|eoi|>"]]


def test_condition_dropout_rate(vocab):
    rng = random.Random(0)
    record = {"task": "t2i", "image": "x", "text_ids": [1, 2, 3]}
    codes = {"x": [0] * 64}
    lengths = [len(build_sequence(vocab, record, codes, rng, p_drop=0.1)[0]) for _ in range(4000)]
    dropped = sum(n == 64 + 3 for n in lengths) / len(lengths)
    assert 0.08 < dropped < 0.12
    with pytest.raises(ValueError):
        build_sequence(vocab, {"task": "dance"}, codes, rng)


def test_question_turns_share_one_image_and_train_every_answer(vocab):
    first = understanding_sequence(vocab, [1, 2], [7, 8], [9])
    ids, labels = understanding_turns(vocab, [1, 2], [([7, 8], [9]), ([5, 6], [4, 3])])
    # The first turn is the understanding template itself; the second follows its <|eos|>.
    assert (ids[:len(first[0])], labels[:len(first[1])]) == first
    assert ids[len(first[0]):] == [5, 6, 4, 3, vocab["<|eos|>"]]
    assert [l for l in labels if l != IGNORE] == [9, vocab["<|eos|>"], 4, 3, vocab["<|eos|>"]]
    assert ids.count(vocab["<|soi|>"]) == 1


def test_vqa_batches_ask_each_image_its_other_questions(vocab):
    def question(i, image, q, a):
        return {"id": f"q{i}", "task": "vqa", "image": image, "text_ids": q, "answer_ids": a}

    pool = [question(0, "x", [7], [9]), question(1, "x", [8], [5]), question(2, "y", [6], [4])]
    records = SimpleNamespace(codes={"x": [0, 1], "y": [2, 3]}, by_task={"vqa": pool},
                              questions_by_image={"x": pool[:2], "y": pool[2:]})
    sequences = {}
    for per_sequence in (1, 2):
        batch = TaskMixBatches(records, vocab, [], {"vqa": 1.0}, 16, 1, 0, 0.0,
                               questions_per_sequence=per_sequence)[0]
        sequences[per_sequence] = batch
        answers = (batch["labels"] != IGNORE).sum(dim=1).tolist()
        rows = batch["input_ids"].tolist()
        for row, n in zip(rows, answers):
            on_x = vocab.image_id(0) in row
            # An image with two questions trains both answers (2 targets each with <|eos|>); y has one.
            assert n == (4 if on_x and per_sequence == 2 else 2)
    assert (sequences[1]["input_ids"][:, :6] == sequences[2]["input_ids"][:, :6]).all()  # same draws, same first turn
    with pytest.raises(ValueError, match="questions_per_sequence"):
        TaskMixBatches(records, vocab, [], {"vqa": 1.0}, 16, 1, 0, 0.0, questions_per_sequence=0)


def test_question_type_weights_shift_the_vqa_draw(vocab):
    """Weight 3 on `exists` against 1 on `color`: about three quarters of the drawn questions are
    existence questions (uniform: a half); a type no question has is refused by name."""
    def question(i, qtype):
        return {"id": f"q{i}", "task": "vqa", "image": "x", "text_ids": [7 if qtype == "exists" else 8],
                "answer_ids": [9], "meta": {"question_type": qtype}}

    pool = [question(i, "exists" if i % 2 else "color") for i in range(20)]
    records = SimpleNamespace(codes={"x": [0, 1]}, by_task={"vqa": pool}, questions_by_image={"x": pool})

    def share_of_exists(weights):
        batches = TaskMixBatches(records, vocab, [], {"vqa": 1.0}, 64, 20, 0, 0.0, question_weights=weights)
        rows = torch.cat([batches[k]["input_ids"] for k in range(len(batches))])
        return (rows == 7).any(dim=1).float().mean().item()

    assert 0.45 < share_of_exists({}) < 0.55
    assert 0.70 < share_of_exists({"exists": 3.0}) < 0.80
    with pytest.raises(ValueError, match=r"count_color.*types present are \['color', 'exists'\]"):
        TaskMixBatches(records, vocab, [], {"vqa": 1.0}, 16, 1, 0, 0.0, question_weights={"count_color": 2.0})


def test_describe_first_asks_the_question_after_the_caption_turn(vocab):
    """A describe-first VQA sequence is the caption sequence, then `question -> answer <|eos|>`; both the
    caption and the answer are targets, and inference's prompt is the sequence up to the answer."""
    describe, caption, question, answer = [5, 6], [11, 12, 13], [7, 8], [9]
    record = {"task": "vqa", "image": "x", "text_ids": question, "answer_ids": answer}
    codes = {"x": [1, 2]}
    ids, labels = build_sequence(vocab, record, codes, random.Random(0), 0.0, describe, captions={"x": caption})
    caption_turn = understanding_sequence(vocab, [1, 2], describe, caption)
    assert (ids[:len(caption_turn[0])], labels[:len(caption_turn[1])]) == caption_turn
    assert ids[len(caption_turn[0]):] == question + answer + [vocab["<|eos|>"]]
    assert [l for l in labels if l != IGNORE] == caption + [vocab["<|eos|>"]] + answer + [vocab["<|eos|>"]]
    prompt = understanding_turns_prefix(vocab, [1, 2], [(describe, caption)], question)
    assert ids[:len(prompt)] == prompt and ids[len(prompt):] == answer + [vocab["<|eos|>"]]
    assert understanding_turns_prefix(vocab, [1, 2], [], question) == understanding_sequence(vocab, [1, 2], question, [])[0][:-1]
    direct, _ = build_sequence(vocab, record, codes, random.Random(0), 0.0, describe)
    assert direct == understanding_sequence(vocab, [1, 2], question, answer)[0]


def test_describe_first_batches_need_a_caption_for_every_question_image(vocab, tmp_path):
    """Training and validation batches both put the caption turn first; a question whose image has no
    caption is refused up front, naming the fix."""
    question = {"id": "q0", "task": "vqa", "image": "x", "text_ids": [7], "answer_ids": [9]}
    records = SimpleNamespace(codes={"x": [0, 1]}, by_task={"vqa": [question], "caption": []},
                              questions_by_image={"x": [question]}, captions_by_image={"x": [11, 12]})
    records.captions_for_questions = lambda: TaskRecords.captions_for_questions(records)
    for batch in (TaskMixBatches(records, vocab, [5], {"vqa": 1.0}, 4, 1, 0, 0.0, describe_first=True)[0],
                  EvalBatches(records, vocab, [5], 4, 4, describe_first=True)[0]):
        targets = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
        assert targets == [11, 12, vocab["<|eos|>"], 9, vocab["<|eos|>"]]
    records.captions_by_image = {}
    with pytest.raises(ValueError, match="1 images have questions but no caption.*describe_first=false"):
        TaskMixBatches(records, vocab, [5], {"vqa": 1.0}, 4, 1, 0, 0.0, describe_first=True)


def test_caption_reading_is_describe_first_vqa_without_its_image(vocab):
    """A caption-reading sequence is the describe-first VQA sequence with its image span cut out, and
    only the answer as target: the question stands as far from every caption token as at inference."""
    describe, caption, question, answer = [5, 6], [11, 12, 13], [7, 8], [9]
    record = {"task": "vqa", "image": "x", "text_ids": question, "answer_ids": answer}
    full, _ = build_sequence(vocab, record, {"x": [1, 2]}, random.Random(0), 0.0, describe, captions={"x": caption})
    span = [vocab["<|soi|>"], vocab.image_id(1), vocab.image_id(2), vocab["<|eoi|>"]]
    assert full[1:1 + len(span)] == span
    ids, labels = reading_sequence(vocab, describe, caption, question, answer)
    assert ids == full[:1] + full[1 + len(span):]
    assert [l for l in labels if l != IGNORE] == answer + [vocab["<|eos|>"]]
    assert labels[-2:] == answer + [vocab["<|eos|>"]]


def test_caption_reading_batches_draw_vqa_records_and_need_their_captions(vocab):
    """`task_mix.read` has no records of its own: it draws the VQA questions (by their type weights),
    holds no image tokens, and learns only answers; without captions it is refused, naming the fix."""
    def question(i, qtype):
        return {"id": f"q{i}", "task": "vqa", "image": "x", "text_ids": [7 if qtype == "exists" else 8],
                "answer_ids": [9], "meta": {"question_type": qtype}}

    pool = [question(i, "exists" if i % 2 else "color") for i in range(20)]
    records = SimpleNamespace(codes={"x": [0, 1]}, by_task={"vqa": pool, "caption": []},
                              questions_by_image={"x": pool}, captions_by_image={"x": [11, 12]})
    records.captions_for_questions = lambda: TaskRecords.captions_for_questions(records)
    batches = TaskMixBatches(records, vocab, [5], {"read": 1.0}, 64, 20, 0, 0.0, question_weights={"exists": 3.0})
    rows, labels = [], []
    for k in range(len(batches)):
        batch = batches[k]
        assert batch["task"] == "read"
        rows.append(batch["input_ids"])
        labels.append(batch["labels"])
    rows, labels = torch.cat(rows), torch.cat(labels)
    assert not (rows >= vocab.image_offset).any()
    assert sorted(set(labels[labels != IGNORE].tolist())) == [9, vocab["<|eos|>"]]
    assert (rows[:, 1:4] == torch.tensor([5, 11, 12])).all()                # describe, then the caption
    assert 0.70 < (rows == 7).any(dim=1).float().mean().item() < 0.80       # exists drawn 3 to 1
    # Mixed with VQA but not describe-first: VQA keeps its direct template, reading still reads.
    mixed = TaskMixBatches(records, vocab, [5], {"vqa": 1.0, "read": 1.0}, 8, 12, 0, 0.0)
    by_task = {mixed[k]["task"]: mixed[k] for k in range(len(mixed))}
    assert set(by_task) == {"vqa", "read"}
    assert not (by_task["vqa"]["input_ids"] == 11).any() and (by_task["read"]["input_ids"] == 11).any()
    records.captions_by_image = {}
    with pytest.raises(ValueError, match=r"no caption.*task_mix.read=0"):
        TaskMixBatches(records, vocab, [5], {"read": 1.0}, 4, 1, 0, 0.0)


def test_training_settings_fit_what_the_data_holds():
    """A user's data without the world's tasks or question types: absent tasks get weight 0, describe-first
    and caption reading turn off when question images lack captions, per-type weights are dropped when no
    question has a type; each change is said in one line. The world's data changes nothing."""
    from arm.config import load_config
    from arm.model.data import fit_to_data

    p = load_config("configs/default.yaml").pretrain
    p = type(p)(**{**vars(p), "task_mix": {**p.task_mix, "read": 0.1}})
    lines: list[str] = []
    questions = [{"image": "a", "meta": {}}, {"image": "b", "meta": {}}]
    users = SimpleNamespace(by_task={"vqa": questions, "caption": [{"image": "a"}], "t2i": [{"image": "a"}]})
    fitted = fit_to_data(p, users, say=lines.append)
    assert fitted.task_mix == {**p.task_mix, "edit": 0.0, "text": 0.0, "read": 0.0}
    assert fitted.describe_first is False and fitted.question_type_weights == {}
    assert len(lines) == 4 and any("1 of 2 images with questions have no caption" in line for line in lines)
    assert any("no edit records" in line for line in lines) and any("question_type_weights ignored" in line for line in lines)

    world = SimpleNamespace(by_task={t: [{"image": "a", "meta": {"question_type": "exists"}}]
                                     for t in ("t2i", "edit", "vqa", "caption", "text")})
    lines.clear()
    assert fit_to_data(p, world, say=lines.append) == p and lines == []


def test_question_type_weights_can_be_emptied_from_the_command_line():
    from arm.config import load_config

    assert load_config("configs/default.yaml", ["pretrain.question_type_weights=null"]).pretrain.question_type_weights == {}
