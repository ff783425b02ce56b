"""Write the byte-level tokenizer shipped as shardtune/assets/tiny-tokenizer (the `tiny` model's tokenizer).

One token per byte, so any UTF-8 text round-trips exactly and character-level tasks (reverse a word,
add two numbers) are learnable by a model of a few million parameters. Ids 0-255 are the byte values
themselves, then three special tokens:

    256 <pad>    257 <s> (bos)    258 </s> (eos)

259 ids in all, under the tiny model's vocab_size of 320. Nothing is added on encode: no bos, no eos;
the data pipeline appends EOS itself, so what a sequence holds is decided in one place.

Run from the repository root:  python scripts/make_tiny_tokenizer.py
"""
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

OUTPUT_DIR = Path(__file__).resolve().parents[1] / "shardtune" / "assets" / "tiny-tokenizer"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"

# Role-tagged turns, each closed by EOS so a chat-tuned model learns where its reply ends. Tools (JSON schemas)
# are listed first; an assistant's tool call is its function as JSON after <|tool_call|>; results are tool turns.
CHAT_TEMPLATE = (
    "{% if tools %}<|tools|>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% for call in message['tool_calls'] or [] %}<|tool_call|>{{ call['function'] | tojson }}{% endfor %}"
    "{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_byte_tokenizer() -> Tokenizer:
    # Byte-level BPE with no merges: the ByteLevel pre-tokenizer maps each byte to one printable
    # character (GPT-2's table), and the vocabulary gives that character the byte's own value as id.
    byte_to_char = bytes_to_unicode()
    vocab = {char: byte for byte, char in byte_to_char.items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no word splitting (there is nothing to merge), and no prefix space, so the
    # text comes back exactly as it went in.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([PAD, BOS, EOS])
    return tokenizer


def main() -> None:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    build_byte_tokenizer().save(str(OUTPUT_DIR / "tokenizer.json"))
    # Written by hand rather than by save_pretrained, whose output differs between transformers 4
    # and 5; these keys load the same way in both.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD,
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        # Decoding must not touch spaces before punctuation: round-trips are exact.
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,  # the tiny model's max_position_embeddings
        "chat_template": CHAT_TEMPLATE,
    }
    (OUTPUT_DIR / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")

    # Check what we wrote the way users will load it.
    loaded = AutoTokenizer.from_pretrained(OUTPUT_DIR)
    sample = " héllo,  wörld! 23+45 \n\t✓ 🙂"
    ids = loaded(sample)["input_ids"]
    assert ids == list(sample.encode("utf-8")), ids
    assert loaded.decode(ids) == sample
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (256, 257, 258)
    assert loaded.chat_template == CHAT_TEMPLATE
    print(f"wrote {OUTPUT_DIR} ({len(loaded)} ids): {sorted(p.name for p in OUTPUT_DIR.iterdir())}")


if __name__ == "__main__":
    main()
