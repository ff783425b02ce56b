"""Batched greedy generation: completions of instruction prompts, decoded to text.

Works for any causal LM transformers can `generate` with, including an unmerged peft model and a
bitsandbytes-quantized base, on CPU and CUDA.
"""
from typing import List

import torch


def stop_token_ids(model, tokenizer) -> List[int]:
    """The ids that end an answer: the tokenizer's EOS and whatever the model's generation config
    lists (chat models often add an end-of-turn token there)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    for token_id in [configured] if isinstance(configured, int) else (configured or []):
        if token_id not in ids:
            ids.append(token_id)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an EOS token; "
                         "greedy generation would never stop before max_new_tokens")
    return ids


def encode_prompts(tokenizer, prompts: List[str]) -> List[List[int]]:
    """Token ids of each prompt, starting with BOS where the tokenizer puts one at the start of a text
    (Llama's do, the tiny byte tokenizer does not) and never ending in EOS: a model sees a prompt
    as it saw the start of each training sequence, and an EOS would tell it the text is over."""
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("a")["input_ids"][:1] == [bos]:
        ids = [[bos] + row for row in ids]
    return ids


def completion_up_to_stop(token_ids: List[int], stop_ids: List[int]) -> List[int]:
    """The new tokens before the first stop token (generate pads a finished row until the batch ends)."""
    for position, token_id in enumerate(token_ids):
        if token_id in stop_ids:
            return token_ids[:position]
    return token_ids


def greedy_generate(model, tokenizer, prompts: List[str], max_new_tokens: int, batch_size: int = 16) -> List[str]:
    """Greedy completion of each prompt, as text without the prompt, the stop token and any special
    token, in the order of `prompts`. See `greedy_token_ids`."""
    token_ids = greedy_token_ids(model, tokenizer, prompts, max_new_tokens, batch_size)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids]


@torch.no_grad()
def greedy_token_ids(model, tokenizer, prompts: List[str], max_new_tokens: int, batch_size: int = 16) -> List[List[int]]:
    """The new token ids of each prompt's greedy completion, up to (not including) the first stop token.

    Prompts are tokenized by `encode_prompts`. Each batch is left-padded: every prompt then ends at the
    same position, where generation starts. Prompts are batched in order of length to keep padding
    small; the answers come back in the order of `prompts`.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    completions = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, padding=True,
                                  padding_side="left", return_tensors="pt").to(device)
            output = model.generate(
                **batch, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                eos_token_id=stop_ids, pad_token_id=pad_id,
                use_cache=True,  # training turns the model config's use_cache off; decoding wants the cache
            )
            new_tokens = output[:, batch["input_ids"].shape[1]:].tolist()
            for index, token_ids in zip(indices, new_tokens):
                completions[index] = completion_up_to_stop(token_ids, stop_ids)
    finally:
        model.train(was_training)
    return completions
