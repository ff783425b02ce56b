"""The model a run fine-tunes, checked in the launcher before any worker starts.

`check_model` loads the model's config (a pretrained model's own, or model.architecture for init=random) and the
run's tokenizer, and refuses what would otherwise fail inside the workers or train the wrong thing: a config
transformers cannot read or build, tokenizer ids past the model's embedding rows (an IndexError in every worker),
a chat template that does not render. It warns about model-group settings that a pretrained model's own config
overrides, and logs the model it will train with its parameter count. Each refusal is a ConfigError naming the key.
"""
import logging
import os

from transformers import PretrainedConfig

from ..data.formats import chat_template_for
from ..data.pipeline import sources
from ..data.tokenizer import build_tokenizer
from ..config import weights_origin
from ..errors import ConfigError
from ..paths import looks_like_local_path
from ..trainer import fast_path
from .memory import architecture_config, count_parameters, pretrained_config

log = logging.getLogger("shardtune")

# A conversation every usable chat template renders: one user turn, one assistant turn (some templates refuse a
# system turn, so the probe has none).
PROBE_CONVERSATION = [{"role": "user", "content": "What is two plus two?"},
                      {"role": "assistant", "content": "Four, of course."}]
# Files a directory holds when a tokenizer was saved into it (save_pretrained, or the hub's layouts).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model(cfg):
    """Check the model and tokenizer of `cfg` (a validated run config) and log them; return the tokenizer."""
    model_cfg = cfg.model
    pretrained = model_cfg.init == "pretrained"
    config = pretrained_config(model_cfg) if pretrained else architecture_config(model_cfg.architecture)
    if pretrained:
        warn_ignored_architecture(model_cfg, config)
        warn_other_tokenizer(model_cfg)
    tokenizer = build_tokenizer(model_cfg)
    check_tokenizer_fits(model_cfg, tokenizer, config)
    if any(source["format"] == "chat" for source in sources(cfg.data)):
        check_chat_template(cfg, tokenizer)
    try:
        counts = count_parameters(config, cfg.method, model_cfg.trust_remote_code)  # on the meta device: no weights
    except ConfigError:
        raise
    except ValueError as error:  # transformers' "Unrecognized configuration class ... for AutoModelForCausalLM"
        raise ConfigError("model.name_or_path" if pretrained else "model.architecture",
                          f"not a causal language model transformers can build: {str(error).splitlines()[0]}") from error
    # Refuses a part of the fast path this run cannot have.
    fast_path.choose(cfg.train, cfg.method, cfg.launcher.device, config.model_type)
    adapters = 0 if cfg.method.name == "full" else counts.trainable  # counted as the workers count: base + adapters
    log.info("model %s (%s): %s, %s params (%s trainable with method=%s); tokenizer %s (%d tokens)",
             model_cfg.name, weights_origin(model_cfg), config.model_type, f"{counts.total + adapters:,}", f"{counts.trainable:,}",
             cfg.method.name, model_cfg.tokenizer or model_cfg.name_or_path, len(tokenizer))
    return tokenizer


def embedding_rows(config: PretrainedConfig) -> int:
    """Rows of the input embedding a model of `config` gets (the text model's, for a multimodal config)."""
    return config.get_text_config().vocab_size


def check_tokenizer_fits(model_cfg, tokenizer, config: PretrainedConfig) -> None:
    """Every id the tokenizer can produce, its special tokens' included, must index a row of the model's embedding."""
    rows = embedding_rows(config)
    special_ids = [token_id for token_id in tokenizer.all_special_ids if token_id is not None]
    highest = max([len(tokenizer) - 1, *special_ids])
    tokenizer_source = model_cfg.tokenizer or model_cfg.name_or_path
    if highest >= rows:
        if model_cfg.tokenizer:
            key = "model.tokenizer"
        else:
            key = "model.name_or_path" if model_cfg.init == "pretrained" else "model.architecture.vocab_size"
        model = model_cfg.name_or_path if model_cfg.init == "pretrained" else "model.architecture"
        raise ConfigError(key, f"the tokenizer {tokenizer_source} has {len(tokenizer)} tokens (ids up to {highest}) "
                               f"but the model ({model}) has {rows} embedding rows (vocab_size): its ids would index "
                               f"past the embedding. Use the model's own tokenizer (model.tokenizer=null) or one made "
                               f"for this model")
    if tokenizer.eos_token_id is None:
        raise ConfigError("model.tokenizer", f"the tokenizer {tokenizer_source} has no EOS token, which ends every "
                                             f"training example (and pads batches); choose one that has")


def check_chat_template(cfg, tokenizer) -> None:
    """The template chat rows will be rendered with must render a two-turn conversation, answer included."""
    template = chat_template_for(cfg.data, tokenizer)
    origin = "data.chat_template" if cfg.data.chat_template else (
        f"the chat template of the tokenizer {cfg.model.tokenizer or cfg.model.name_or_path}"
        if getattr(tokenizer, "chat_template", None) else "the built-in chat template")
    try:
        rendered = tokenizer.apply_chat_template(PROBE_CONVERSATION, chat_template=template, tokenize=False)
        tokenizer.apply_chat_template(PROBE_CONVERSATION[:1], chat_template=template, tokenize=False,
                                      add_generation_prompt=True)
    except Exception as error:  # jinja2's syntax and runtime errors, and the template's own raise_exception()
        raise ConfigError("data.chat_template", f"{origin} fails on a user/assistant conversation: "
                                                f"{type(error).__name__}: {str(error).strip().splitlines()[0]}; "
                                                f"set data.chat_template to a template that renders") from error
    if PROBE_CONVERSATION[-1]["content"] not in rendered:
        raise ConfigError("data.chat_template", f"{origin} leaves the assistant's answer out of the rendered "
                                                f"conversation, so there would be nothing to train on")


def warn_ignored_architecture(model_cfg, config: PretrainedConfig) -> None:
    """model.architecture describes init=random's model; a pretrained model brings its own config. Name the fields
    the two disagree on (a model group's architecture left over after model.name_or_path was changed)."""
    if not model_cfg.architecture:
        return
    declared, actual = architecture_config(model_cfg.architecture).to_dict(), config.to_dict()
    differing = [f"{key}={config_field(declared, key)!r} (the model's: {config_field(actual, key)!r})"
                 for key in model_cfg.architecture if config_field(declared, key) != config_field(actual, key)]
    if differing:
        log.warning("model.architecture is ignored with model.init=pretrained: the model is built from %s's own "
                    "config, which differs in %s", model_cfg.name_or_path, ", ".join(differing))


def config_field(values: dict, key: str):
    """A field of a config's to_dict() by name, also where transformers nests it (rope_theta in rope_parameters)."""
    if key in values:
        return values[key]
    return next((nested[key] for nested in values.values() if isinstance(nested, dict) and key in nested), None)


def warn_other_tokenizer(model_cfg) -> None:
    """A model directory that holds its own tokenizer, but model.tokenizer names another one."""
    if not model_cfg.tokenizer or not looks_like_local_path(model_cfg.name_or_path):
        return
    model_dir = os.path.expanduser(model_cfg.name_or_path)
    same = os.path.realpath(os.path.expanduser(model_cfg.tokenizer)) == os.path.realpath(model_dir)
    if not same and any(os.path.isfile(os.path.join(model_dir, name)) for name in TOKENIZER_FILES):
        log.warning("model.tokenizer=%s is used instead of the tokenizer saved with the model in %s "
                    "(model.tokenizer=null uses the model's own)", model_cfg.tokenizer, model_cfg.name_or_path)
