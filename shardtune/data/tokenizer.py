"""The run's tokenizer: model.tokenizer, else the model's own, with a pad token (EOS where it has none)."""
from transformers import AutoTokenizer

from ..errors import ConfigError


def build_tokenizer(model_cfg):
    key = "model.tokenizer" if model_cfg.tokenizer else "model.name_or_path"
    source = model_cfg.tokenizer or model_cfg.name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=model_cfg.revision,
                                                  trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as error:  # no tokenizer files there, offline, unknown repo
        raise ConfigError(key, f"cannot load a tokenizer from {source!r}: {str(error).strip().splitlines()[0]}"
                          + ("" if model_cfg.tokenizer else "; set model.tokenizer to one made for this model")) from error
    if tokenizer.pad_token is None:
        # No new token (that would need an embedding row the model lacks): labels mask padding out, so sharing EOS
        # is harmless.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
