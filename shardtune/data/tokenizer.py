"""The run's tokenizer: model.tokenizer, else the model's own, with a pad token (EOS where it has none)."""
from transformers import AutoTokenizer


def build_tokenizer(model_cfg):
    source = model_cfg.tokenizer or model_cfg.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(source, revision=model_cfg.revision,
                                              trust_remote_code=model_cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # labels mask padding out, so sharing EOS is harmless
    return tokenizer
