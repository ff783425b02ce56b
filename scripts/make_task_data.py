"""Write the data of the learning demo into shardtune/assets/data/, the same every run.

The demo shows fine-tuning teaching a skill the model lacks, measured by exact match on held-out rows:

  reverse_words/train.jsonl  4000 rows  "Reverse the word." on a 3-6 letter lowercase word: the task to learn
  reverse_words/test.jsonl    200 rows  the same task on other words: exact match before and after
  string_skills.jsonl        8000 rows  other instructions on 3-8 letter words (copy, uppercase, shift, sort,
                                        swap the ends, repeat), never reversal: what `scripts/make_tiny_base.py`
                                        pretrains the tiny base on, so that LoRA has embeddings, an output head
                                        and attention that already read and write letters

Reversal suits a byte-level model of ~1M parameters: every answer is exact, a handful of tokens long,
and needs attention to the input read backwards, which none of the pretraining skills does. Palindromes
are left out of the reversal rows, so a model that copies its input scores zero; the test words appear in
no training file at all, so the test measures the skill and not memory of words.

Run from the repository root:  python scripts/make_task_data.py
"""
import json
import random
import string
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "shardtune" / "assets" / "data"
SEED = 2024
NUM_TEST_ROWS = 200
NUM_TRAIN_ROWS = 4000
NUM_SKILL_ROWS = 8000
REVERSE_INSTRUCTION = "Reverse the word."
REVERSE_LENGTHS = (3, 6)
SKILL_LENGTHS = (3, 8)


def shift_letters(word: str) -> str:
    return "".join(chr((ord(letter) - ord("a") + 1) % 26 + ord("a")) for letter in word)


# (instruction, answer of a word). Copy is listed twice: it is the easiest skill to start from, and
# a larger share of it gets a randomly initialised model off its first loss plateau sooner.
SKILLS = [
    ("Copy the word.", lambda word: word),
    ("Copy the word.", lambda word: word),
    ("Uppercase the word.", str.upper),
    ("Shift each letter by one.", shift_letters),
    ("Sort the letters.", lambda word: "".join(sorted(word))),
    ("Swap the first and last letters.", lambda word: word[-1] + word[1:-1] + word[0]),
    ("Repeat the word twice.", lambda word: f"{word} {word}"),
]


def random_word(rng: random.Random, lengths) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(*lengths)))


def reversible_words(rng: random.Random, count: int, exclude: set) -> list:
    """`count` distinct words of REVERSE_LENGTHS that are not palindromes and not in `exclude`."""
    words = {}
    while len(words) < count:
        word = random_word(rng, REVERSE_LENGTHS)
        if word != word[::-1] and word not in exclude:
            words.setdefault(word, None)
    return list(words)


def reverse_row(word: str) -> dict:
    return {"instruction": REVERSE_INSTRUCTION, "input": word, "output": word[::-1]}


def skill_rows(rng: random.Random, count: int, exclude: set) -> list:
    rows = {}
    while len(rows) < count:
        word = random_word(rng, SKILL_LENGTHS)
        if word in exclude:
            continue
        instruction, answer = rng.choice(SKILLS)
        row = {"instruction": instruction, "input": word, "output": answer(word)}
        rows.setdefault(json.dumps(row), row)  # unique rows: duplicates would leak between splits
    return list(rows.values())


def write_jsonl(name: str, rows: list) -> None:
    path = DATA_DIR / name
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {path}: {len(rows)} rows, {path.stat().st_size} bytes")


def main() -> None:
    rng = random.Random(SEED)
    test_words = reversible_words(rng, NUM_TEST_ROWS, exclude=set())
    train_words = reversible_words(rng, NUM_TRAIN_ROWS, exclude=set(test_words))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    (DATA_DIR / "reverse_words").mkdir(exist_ok=True)  # a dataset with its own train and test splits
    write_jsonl("reverse_words/test.jsonl", [reverse_row(word) for word in test_words])
    write_jsonl("reverse_words/train.jsonl", [reverse_row(word) for word in train_words])
    write_jsonl("string_skills.jsonl", skill_rows(rng, NUM_SKILL_ROWS, exclude=set(test_words)))


if __name__ == "__main__":
    main()
