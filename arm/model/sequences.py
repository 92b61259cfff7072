"""Training sequences per task, the templates of docs/model.md (-> marks where the loss starts):

    understanding  <|und|> <|soi|> img <|eoi|> question  -> answer <|eos|>
                   [question -> answer <|eos|>] ...  more questions about the same image, as turns
    captioning     <|und|> <|soi|> img <|eoi|> "describe the image." -> caption <|eos|>
    describe first <|und|> <|soi|> img <|eoi|> "describe the image." -> caption <|eos|> question -> answer <|eos|>
                   (VQA when `describe_first` is on: the caption turn comes first, and inference
                   describes the image before answering, so the answer can be read from the model's
                   own words; docs/model.md)
    generation     <|t2i|> prompt <|soi|>  -> img <|eoi|>
    editing        <|edit|> <|soi|> src <|eoi|> instruction <|soi|>  -> tgt <|eoi|>
    text QA        <|und|> question  -> answer <|eos|>
    caption read   <|und|> "describe the image." caption <|eos|> question -> answer <|eos|>
                   (`task_mix.read`: describe-first VQA without its image, the caption given, not
                   predicted: the answer must be read off the words, as inference reads its own)

Condition dropout for classifier-free guidance: with probability p the prompt (generation) or, each
on its own, the instruction and the source image (editing) are dropped from the condition, so the model
also learns the unconditional distributions guidance contrasts with.

>>> from arm.model.vocab import Vocab
>>> v = Vocab(10, 4, {"<|pad|>": 3, "<|eos|>": 4, "<|und|>": 5, "<|t2i|>": 6, "<|edit|>": 7, "<|soi|>": 8, "<|eoi|>": 9})
>>> ids, labels = generation_sequence(v, prompt=[1, 2], image=[0, 3])
>>> ids
[6, 1, 2, 8, 10, 13, 9]
>>> labels
[-100, -100, -100, -100, 10, 13, 9]
"""

from __future__ import annotations

import random

from arm.model.vocab import EDIT, EOI, EOS, SOI, T2I, UND, Vocab

IGNORE = -100
# The question whose answer is the image's caption: describe-first models ask it of themselves first.
DESCRIBE = "describe the image."


def _image_span(vocab: Vocab, codes) -> list[int]:
    return [vocab[SOI]] + [vocab.image_id(int(c)) for c in codes] + [vocab[EOI]]


def understanding_prefix(vocab: Vocab, image, question: list[int]) -> list[int]:
    """The prompt half of the understanding template (also what inference feeds the model)."""
    return [vocab[UND]] + (_image_span(vocab, image) if image is not None else []) + list(question)


def generation_prefix(vocab: Vocab, prompt: list[int]) -> list[int]:
    return [vocab[T2I]] + list(prompt) + [vocab[SOI]]


def editing_prefix(vocab: Vocab, source, instruction: list[int]) -> list[int]:
    """A dropped source image keeps its brackets (`<|soi|> <|eoi|>`), so the layout stays the same."""
    source_span = _image_span(vocab, source) if source is not None else [vocab[SOI], vocab[EOI]]
    return [vocab[EDIT]] + source_span + list(instruction) + [vocab[SOI]]


def understanding_sequence(vocab: Vocab, image, question: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
    prefix = understanding_prefix(vocab, image, question)
    target = list(answer) + [vocab[EOS]]
    return prefix + target, [IGNORE] * len(prefix) + target


def understanding_turns(vocab: Vocab, image, turns: list[tuple[list[int], list[int]]]) -> tuple[list[int], list[int]]:
    """Several questions about one image in one sequence: the first turn is exactly the understanding
    template, each later `question -> answer <|eos|>` follows the previous answer. The image prefix is
    paid for once and trains every answer (a VQA answer is 1 to 3 tokens after 66 image tokens)."""
    (question, answer), *rest = turns
    ids, labels = understanding_sequence(vocab, image, question, answer)
    for question, answer in rest:
        target = list(answer) + [vocab[EOS]]
        ids += list(question) + target
        labels += [IGNORE] * len(question) + target
    return ids, labels


def understanding_turns_prefix(vocab: Vocab, image, answered: list[tuple[list[int], list[int]]],
                               question: list[int]) -> list[int]:
    """The prompt for a further question after answered turns about the same image: what inference feeds
    a describe-first model once it has described the image (the training sequence up to the answer)."""
    if not answered:
        return understanding_prefix(vocab, image, question)
    ids, _ = understanding_turns(vocab, image, answered)
    return ids + list(question)


def generation_sequence(vocab: Vocab, prompt: list[int], image) -> tuple[list[int], list[int]]:
    prefix = generation_prefix(vocab, prompt)
    target = [vocab.image_id(int(c)) for c in image] + [vocab[EOI]]
    return prefix + target, [IGNORE] * len(prefix) + target


def editing_sequence(vocab: Vocab, source, instruction: list[int], target_image) -> tuple[list[int], list[int]]:
    prefix = editing_prefix(vocab, source, instruction)
    target = [vocab.image_id(int(c)) for c in target_image] + [vocab[EOI]]
    return prefix + target, [IGNORE] * len(prefix) + target


def reading_sequence(vocab: Vocab, describe_ids: list[int], caption: list[int], question: list[int],
                     answer: list[int]) -> tuple[list[int], list[int]]:
    """A describe-first VQA sequence without its image span, the caption turn given rather than a target:
    only the answer is learned, and it can only come from the caption. The question sits at the same
    distance from each caption token as in the full sequence, so what is learned here is what the
    model does after describing an image (`pretrain.task_mix.read`; docs/model.md).

    >>> from arm.model.vocab import Vocab
    >>> v = Vocab(10, 4, {"<|pad|>": 3, "<|eos|>": 4, "<|und|>": 5, "<|t2i|>": 6, "<|edit|>": 7, "<|soi|>": 8, "<|eoi|>": 9})
    >>> reading_sequence(v, describe_ids=[1], caption=[2, 2], question=[0], answer=[1])
    ([5, 1, 2, 2, 4, 0, 1, 4], [-100, -100, -100, -100, -100, -100, 1, 4])
    """
    ids, _ = understanding_turns(vocab, None, [(describe_ids, caption), (question, answer)])
    target = list(answer) + [vocab[EOS]]
    return ids, [IGNORE] * (len(ids) - len(target)) + target


def with_caption_turn(turns: list[tuple[list[int], list[int]]], image_key: str, describe_ids: list[int] | None,
                      captions: dict[str, list[int]] | None) -> list[tuple[list[int], list[int]]]:
    """Question turns about an image, after its caption turn when `captions` is given (describe first)."""
    if captions is None:
        return turns
    return [(describe_ids or [], captions[image_key])] + turns


def build_sequence(vocab: Vocab, record: dict, codes: dict, rng: random.Random, p_drop: float = 0.1,
                   describe_ids: list[int] | None = None,
                   captions: dict[str, list[int]] | None = None) -> tuple[list[int], list[int]]:
    """The sequence of one prepared record; `codes` maps image keys to their (g*g,) token codes. With
    `captions` (image key -> caption ids), a VQA record is asked after its image's caption turn."""
    task = record["task"]
    if task == "t2i":
        prompt = [] if rng.random() < p_drop else record["text_ids"]
        return generation_sequence(vocab, prompt, codes[record["image"]])
    if task == "edit":
        instruction = [] if rng.random() < p_drop else record["text_ids"]
        source = None if rng.random() < p_drop else codes[record["source_image"]]
        return editing_sequence(vocab, source, instruction, codes[record["target_image"]])
    if task == "caption":
        return understanding_sequence(vocab, codes[record["image"]], describe_ids or [], record["text_ids"])
    if task == "vqa":
        turns = with_caption_turn([(record["text_ids"], record["answer_ids"])], record["image"], describe_ids, captions)
        return understanding_turns(vocab, codes[record["image"]], turns)
    if task == "text":
        return understanding_sequence(vocab, None, record["text_ids"], record["answer_ids"])
    raise ValueError(f"unknown task {task!r}")
