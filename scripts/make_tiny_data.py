"""Write shardtune/assets/data/tiny_instruct.jsonl: a small synthetic instruction set, the same every run.

Alpaca rows {"instruction", "input", "output"} whose answers are exact and a few characters long, so
the ~2M-parameter `tiny` model with its byte tokenizer can learn them in a few hundred CPU steps and a
falling loss (or exact-match accuracy) means something. Rows are unique and short (well under 64 bytes
of text) to keep sequences, and so tests and the demo, fast. One task has no input, as alpaca allows.

Run from the repository root:  python scripts/make_tiny_data.py
"""
import json
import random
import string
from pathlib import Path

OUTPUT_PATH = Path(__file__).resolve().parents[1] / "shardtune" / "assets" / "data" / "tiny_instruct.jsonl"
NUM_ROWS = 2000
SEED = 1234


def random_word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))


def reverse_row(rng: random.Random) -> dict:
    word = random_word(rng)
    return {"instruction": "Reverse the word.", "input": word, "output": word[::-1]}


def uppercase_row(rng: random.Random) -> dict:
    word = random_word(rng)
    return {"instruction": "Uppercase the word.", "input": word, "output": word.upper()}


def add_row(rng: random.Random) -> dict:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"instruction": "Add the numbers.", "input": f"{a}+{b}", "output": str(a + b)}


def double_row(rng: random.Random) -> dict:
    n = rng.randint(0, 999)
    return {"instruction": f"Double {n}.", "input": "", "output": str(2 * n)}


TASKS = [reverse_row, uppercase_row, add_row, double_row]


def main() -> None:
    rng = random.Random(SEED)
    # Unique rows: a duplicate could land in both the train and the validation split and make
    # validation loss look better than what the model has learned.
    unique_rows = {}
    while len(unique_rows) < NUM_ROWS:
        row = rng.choice(TASKS)(rng)
        unique_rows.setdefault(json.dumps(row), row)
    rows = list(unique_rows.values())
    OUTPUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    with OUTPUT_PATH.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    longest = max(len("".join(row.values()).encode("utf-8")) for row in rows)
    print(f"wrote {OUTPUT_PATH}: {len(rows)} rows, {OUTPUT_PATH.stat().st_size} bytes, longest row text {longest} bytes")


if __name__ == "__main__":
    main()
