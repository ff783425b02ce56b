"""Greedy generation (shardtune/evaluation/generate.py) against a hand-written argmax loop on the tiny
model: the same tokens, whatever the batching and padding, with and without a peft adapter."""
import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from shardtune.config import asset_path
from shardtune.data.formats import format_prompt
from shardtune.evaluation.generate import (
    completion_up_to_stop,
    encode_prompts,
    greedy_generate,
    greedy_token_ids,
    stop_token_ids,
)

# Different lengths, so a batch of them needs padding.
PROMPTS = [format_prompt("Reverse the word.", "abc"), "hi", format_prompt("Double 12.", ""),
           format_prompt("Add the numbers.", "23+19")]
MAX_NEW_TOKENS = 6


def tiny_model(seed: int = 0):
    """The `model=tiny` architecture with seeded random weights, configured as training leaves it."""
    architecture = OmegaConf.to_container(compose_cfg("model=tiny").model.architecture)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**architecture))
    model.config.use_cache = False
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@torch.no_grad()
def argmax_loop(model, tokenizer, prompt: str, max_new_tokens: int, stop_ids) -> list:
    """Greedy decoding written out: run the whole sequence, append the most likely token, repeat."""
    ids = encode_prompts(tokenizer, [prompt])[0]
    new = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids + new])).logits
        token = int(logits[0, -1].argmax())
        if token in stop_ids:
            break
        new.append(token)
    return new


def test_equals_the_argmax_loop_batched_and_unbatched(model, tokenizer):
    expected = [argmax_loop(model, tokenizer, p, MAX_NEW_TOKENS, [tokenizer.eos_token_id]) for p in PROMPTS]
    assert all(len(ids) == MAX_NEW_TOKENS for ids in expected)  # a random model does not stop early
    assert len({tuple(ids) for ids in expected}) > 1  # the prompts do lead to different answers
    # batch_size=4: one left-padded batch of all lengths; 3: a padded batch and a single; 1: no padding.
    for batch_size in (4, 3, 1):
        assert greedy_token_ids(model, tokenizer, PROMPTS, MAX_NEW_TOKENS, batch_size) == expected


def test_text_is_the_decoded_new_tokens(model, tokenizer):
    ids = greedy_token_ids(model, tokenizer, PROMPTS, MAX_NEW_TOKENS, batch_size=4)
    texts = greedy_generate(model, tokenizer, PROMPTS, MAX_NEW_TOKENS, batch_size=4)
    assert texts == [tokenizer.decode(i, skip_special_tokens=True) for i in ids]


def test_leaves_the_training_mode_as_it_was(model, tokenizer):
    model.train()
    greedy_generate(model, tokenizer, PROMPTS[:1], 2)
    assert model.training
    model.eval()


def test_stops_at_a_generation_config_eos_id(tokenizer):
    """A token the model's generation config lists as EOS ends the answer, which holds what came before."""
    model = tiny_model()
    free_running = argmax_loop(model, tokenizer, PROMPTS[0], MAX_NEW_TOKENS, [tokenizer.eos_token_id])
    stop_at = free_running[2]
    model.generation_config.eos_token_id = [stop_at]
    assert stop_token_ids(model, tokenizer) == [tokenizer.eos_token_id, stop_at]
    cut = free_running[:free_running.index(stop_at)]
    assert greedy_token_ids(model, tokenizer, PROMPTS[:1], MAX_NEW_TOKENS) == [cut]
    # In a batch, the finished row is padded while the others go on; padding never reaches the answer.
    batched = greedy_token_ids(model, tokenizer, PROMPTS, MAX_NEW_TOKENS, batch_size=4)
    assert batched[0] == cut
    assert batched == [argmax_loop(model, tokenizer, p, MAX_NEW_TOKENS, [tokenizer.eos_token_id, stop_at])
                       for p in PROMPTS]


def test_peft_model_unmerged(tokenizer):
    from peft import LoraConfig, get_peft_model
    base = tiny_model()
    before = greedy_token_ids(base, tokenizer, PROMPTS, MAX_NEW_TOKENS, batch_size=4)
    # init_lora_weights=False: random B as well as A, so the adapter changes what the model says.
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=64, target_modules="all-linear",
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    expected = [argmax_loop(peft_model, tokenizer, p, MAX_NEW_TOKENS, [tokenizer.eos_token_id]) for p in PROMPTS]
    assert expected != before
    assert greedy_token_ids(peft_model, tokenizer, PROMPTS, MAX_NEW_TOKENS, batch_size=4) == expected


def test_prompts_start_with_bos_only_where_the_tokenizer_adds_one(tokenizer):
    # The tiny byte tokenizer adds nothing: ids are the bytes, as in training.
    assert encode_prompts(tokenizer, ["ab", "c"]) == [[97, 98], [99]]
    with_bos = AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer"), add_bos_token=True, add_eos_token=True)
    assert with_bos("ab")["input_ids"] == [257, 97, 98, 258]
    assert encode_prompts(with_bos, ["ab", "c"]) == [[257, 97, 98], [257, 99]]  # BOS yes, EOS no


def test_completion_up_to_stop():
    assert completion_up_to_stop([5, 6, 9, 7, 9], [9]) == [5, 6]
    assert completion_up_to_stop([9, 5], [7, 9]) == []
    assert completion_up_to_stop([5, 6], [9]) == [5, 6]


def test_refuses_a_zero_budget(model, tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=0)
