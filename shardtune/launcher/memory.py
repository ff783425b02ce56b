"""Per-GPU memory estimate for `shardtune plan`, from the config alone.

Owns: reading the model's config (`model_config`: a pretrained model's own, or model.architecture) and
shape, counting parameters without allocating weights (`count_parameters`, on the meta device), and turning (method, strategy, precision, batch shape,
world size) into bytes per GPU (`estimate_memory` -> `MemoryEstimate`). Nothing here loads weights
or touches a GPU; the numbers are a planning aid built from published rules of thumb, not a
measurement.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from ..errors import ConfigError
from ..paths import looks_like_local_path
from ..precision import DTYPES, bytes_per_element
from ..strategy_registry import Sharding, strategy_spec

GIB = 1024**3
ADAM_STATES_BYTES = 8  # exp_avg + exp_avg_sq, both fp32
MASTER_COPY_BYTES = 4  # fp32 master weights when the model itself is kept in 16-bit
CUDA_CONTEXT_BYTES = 1 * GIB  # CUDA context, cuBLAS/NCCL workspaces
# bitsandbytes 4-bit: one fp32 absmax per 64 weights costs 32/64 = 0.5 bit per weight; double
# quantization stores those absmax values in 8 bits (8/64) plus an fp32 constant per 256 blocks
# (32/(64*256)), about 0.127 bit per weight.
QUANT_CONSTANT_BITS = {True: 8 / 64 + 32 / (64 * 256), False: 32 / 64}
# Activations saved per token per decoder layer, in bytes with 16-bit compute: 30*h + 8.5*i
# (h hidden, i MLP intermediate size). Measured on an H100 with transformers' Llama and Qwen2
# layers (bf16 autocast, sdpa, peft LoRA with dropout or full fine-tuning): the fit is within 6%
# on four shapes (h 896..4096, i/h 3.5..5.4). Korthikanti et al. 2022's 34*h for a fused Megatron
# GPT layer is about half of that: HF layers keep fp32 RMSNorm inputs, RoPE copies, the SwiGLU
# intermediates and LoRA's dropped inputs.
LAYER_BYTES_PER_HIDDEN = 30
LAYER_BYTES_PER_INTERMEDIATE = 8.5
# Eager attention also keeps the s x s scores: Korthikanti's 5*a*s/h bytes per token per hidden
# unit. Fused kernels (sdpa, flash) never materialise them.
SCORE_MATRIX_FACTOR = 5
# The loss upcasts logits to fp32: log-softmax output kept for backward (4 B), then its gradient
# and the logits' gradient (4 + 4 B) at the start of backward, when every activation is alive.
# Measured 12 B per logit on an H100 with transformers' loss.
LOGITS_BYTES_PER_ELEMENT = 12
ATTENTION_KEEPING_SCORES = {"eager"}


# --------------------------------------------------------------------------- model shape


def architecture_config(architecture) -> PretrainedConfig:
    """The transformers config a model.architecture dict describes (init=random builds from it)."""
    fields = _plain_dict(architecture)
    if "model_type" not in fields:
        raise ConfigError("model.architecture", "needs a model_type (e.g. llama, mistral, qwen2)")
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def pretrained_config(model_cfg) -> PretrainedConfig:
    """model.name_or_path's own config: its config.json, read from the directory or from the hub."""
    name_or_path = model_cfg.name_or_path
    if not name_or_path:
        raise ConfigError("model.name_or_path", "empty, and model.architecture is not set: one of them must say "
                                                "the model's shape")
    local = os.path.expanduser(name_or_path)  # validation refused a local path without config.json already
    try:
        return AutoConfig.from_pretrained(local if os.path.isdir(local) else name_or_path, revision=model_cfg.revision,
                                          trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as error:  # offline, unknown repo, not a repo id, or a config transformers can't read
        raise ConfigError("model.name_or_path", f"cannot read the config of {name_or_path!r}: "
                                                f"{str(error).strip().splitlines()[0]}") from error


def model_config(model_cfg) -> PretrainedConfig:
    """The transformers config `shardtune plan` sizes: a pretrained model's own config.json where it is on disk;
    else model.architecture (init=random, or a hub model's public config, so that planning needs no download);
    else the hub's config."""
    on_disk = bool(model_cfg.name_or_path) and looks_like_local_path(model_cfg.name_or_path)
    if model_cfg.architecture and not (model_cfg.init == "pretrained" and on_disk):
        return architecture_config(model_cfg.architecture)
    return pretrained_config(model_cfg)


@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from the module tree, without any weights."""
    num_parameters: int  # every parameter once (tied embeddings counted once)
    linear_layers: Tuple[LinearLayer, ...]  # every nn.Linear except the output head


_SHAPES: Dict[str, ModelShape] = {}  # keyed by the config's JSON: plan and tests ask repeatedly


def model_shape(config: PretrainedConfig, trust_remote_code: bool = False) -> ModelShape:
    key = config.to_json_string(use_diff=False)
    if key not in _SHAPES:
        # The meta device gives every tensor a shape and no storage: an 8B model builds in ~1 s.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        head = model.get_output_embeddings()
        linear_layers = tuple(
            LinearLayer(name, module.in_features, module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
        )
        _SHAPES[key] = ModelShape(sum(p.numel() for p in model.parameters()), linear_layers)
    return _SHAPES[key]


def adapter_parameter_count(shape: ModelShape, method_cfg) -> int:
    """LoRA (or DoRA) parameters for the method's rank and target_modules, counted analytically.

    Matching follows peft: "all-linear" is every nn.Linear but the output head; a name matches a
    module whose qualified name equals it or ends with "." + it. Each adapted Linear(in, out) gets
    A (rank x in) and B (out x rank); DoRA adds a magnitude vector of length out.
    """
    targets = list(method_cfg.target_modules)
    if targets == ["all-linear"]:
        adapted = shape.linear_layers
    else:
        adapted = tuple(
            layer for layer in shape.linear_layers
            if any(layer.name == t or layer.name.endswith("." + t) for t in targets)
        )
        if not adapted:
            raise ConfigError("method.target_modules", f"{targets} matches no linear layer of the model")
    dora_magnitude = 1 if method_cfg.use_dora else 0
    return sum(
        method_cfg.rank * (layer.in_features + layer.out_features) + dora_magnitude * layer.out_features
        for layer in adapted
    )


@dataclass(frozen=True)
class ParameterCounts:
    total: int  # the base model
    quantizable: int  # weights of the linear layers bitsandbytes would quantize (not their biases)
    trainable: int  # full: total; lora/qlora: the adapters


def count_parameters(config: PretrainedConfig, method_cfg, trust_remote_code: bool = False) -> ParameterCounts:
    shape = model_shape(config, trust_remote_code)
    quantizable = sum(layer.in_features * layer.out_features for layer in shape.linear_layers)
    trainable = shape.num_parameters if method_cfg.name == "full" else adapter_parameter_count(shape, method_cfg)
    return ParameterCounts(shape.num_parameters, quantizable, trainable)


# --------------------------------------------------------------------------- the estimate


@dataclass
class MemoryEstimate:
    """Bytes per GPU, one field per component, and a note per component saying what it assumes."""
    weights: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    cuda_context: int
    notes: Dict[str, str] = field(default_factory=dict)
    summary: str = ""
    num_parameters: int = 0
    num_trainable_parameters: int = 0

    COMPONENTS = ("weights", "grads", "optimizer", "activations", "logits", "cuda_context")

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in self.COMPONENTS)

    def rows(self) -> List[Tuple[str, float, str]]:
        """(component, GiB per GPU, what it assumes), ending with the total."""
        rows = [(name, getattr(self, name) / GIB, self.notes.get(name, "")) for name in self.COMPONENTS]
        # Summing is conservative: with set_to_none, gradients fill in as backward frees activations;
        # DDP's gradient buckets and gradient accumulation keep them all alive, though.
        return rows + [("total", self.total / GIB, "sum of the rows (conservative), before allocator fragmentation")]

    def format(self) -> str:
        lines = [self.summary] if self.summary else []
        lines.append(f"{'component':<13} {'GiB/GPU':>8}  assumes")
        for name, gib, note in self.rows():
            if name == "total":
                lines.append("-" * 13 + " " + "-" * 8)
            lines.append(f"{name:<13} {gib:>8.2f}  {note}")
        return "\n".join(lines)


def _dtype_name(value: str, key: str) -> str:
    if value not in DTYPES:
        raise ValueError(f"{key}={value!r}: expected auto, bf16, fp16 or fp32")
    return value


def estimate_memory(cfg, world_size: int) -> MemoryEstimate:
    """Per-GPU memory of training `cfg` data-parallel over `world_size` GPUs."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: needs at least one GPU")
    # `plan` is about GPU memory, where auto means bf16.
    precision = "bf16" if cfg.train.precision == "auto" else _dtype_name(cfg.train.precision, "train.precision")
    compute_bytes = bytes_per_element(precision)
    method = cfg.method
    config = model_config(cfg.model)
    counts = count_parameters(config, method, cfg.model.trust_remote_code)
    strategy = strategy_spec(cfg.strategy)
    shard = strategy.sharding(cfg.strategy, world_size)
    # DeepSpeed's bf16/fp16 modes cast the whole module to 16-bit and keep fp32 masters inside the
    # optimizer; DDP and FSDP2 keep fp32 parameters (they are the masters) and cast for compute.
    deepspeed_16bit = strategy.kind == "deepspeed" and compute_bytes == 2
    trainable_bytes = 2 if deepspeed_16bit else 4

    # Under DDP a full fine-tune keeps fp32 parameters and autocast computes in 16-bit: the hidden
    # states between layers stay fp32, and autocast's 16-bit weight copies are saved for backward
    # (with checkpointing they are recomputed per layer instead).
    ddp_autocast_full = method.name == "full" and strategy.kind == "ddp" and compute_bytes == 2
    weights, weights_note = _weights(method, counts, strategy.kind, shard, compute_bytes, trainable_bytes, precision)
    if ddp_autocast_full and not cfg.train.activation_checkpointing:
        weights += counts.total * 2
        weights_note += "; + 2 B/param autocast copies held until backward"
    grads = 0 if shard.grads_offloaded else counts.trainable * trainable_bytes // shard.grads
    grads_note = (
        "in host memory (FSDP cpu_offload)" if shard.grads_offloaded
        else f"{_count(counts.trainable)} trainable x {trainable_bytes} B "
        f"({'DeepSpeed 16-bit grads' if deepspeed_16bit else 'fp32, reduced in fp32'})"
        + _placement(shard.grads)
    )
    optimizer_bytes = ADAM_STATES_BYTES + (MASTER_COPY_BYTES if deepspeed_16bit else 0)
    if shard.optimizer_offloaded:
        optimizer, optimizer_note = 0, "AdamW states and fp32 masters in host memory (CPU optimizer step)"
    else:
        optimizer = counts.trainable * optimizer_bytes // shard.optimizer
        optimizer_note = (
            f"AdamW: 2 fp32 states{' + fp32 master copy' if deepspeed_16bit else ''} = {optimizer_bytes} B/param"
            + _placement(shard.optimizer)
        )
    activations, activations_note = _activations(config, cfg, precision, ddp_autocast_full or compute_bytes == 4)
    logits = cfg.train.micro_batch_size * cfg.train.seq_len * config.vocab_size * LOGITS_BYTES_PER_ELEMENT
    logits_note = (
        f"b*s*vocab*{LOGITS_BYTES_PER_ELEMENT} B: fp32 log-softmax + its gradients in the loss (vocab "
        f"{config.vocab_size}); often the largest term for big vocabularies"
    )
    method_text = method.name if method.name == "full" else f"{method.name} r={method.rank}"
    if method.name == "qlora":
        method_text += f" {method.bits}-bit"
    return MemoryEstimate(
        weights=weights, grads=grads, optimizer=optimizer, activations=activations, logits=logits,
        cuda_context=CUDA_CONTEXT_BYTES,
        notes={
            "weights": weights_note, "grads": grads_note, "optimizer": optimizer_note,
            "activations": activations_note, "logits": logits_note,
            "cuda_context": "fixed allowance: CUDA context, cuBLAS/NCCL workspaces",
        },
        summary=(
            f"{cfg.model.name} | {method_text} | {strategy.name} on {world_size} GPU(s) | {precision} | "
            f"micro_batch_size {cfg.train.micro_batch_size} x seq_len {cfg.train.seq_len} | "
            f"{_count(counts.total)} params, {_count(counts.trainable)} trainable"
        ),
        num_parameters=counts.total,
        num_trainable_parameters=counts.trainable,
    )


def _weights(method, counts: ParameterCounts, kind: str, shard: Sharding, compute_bytes: int, trainable_bytes: int,
             precision: str):
    """Bytes of parameters resident on one GPU, and the note saying why."""
    if shard.weights_offloaded and kind == "deepspeed":
        return 0, "~0: offload_param keeps parameters in host memory; only the layers in use are gathered"
    if method.name == "full":
        if compute_bytes == 4:
            kind = "fp32"
        elif trainable_bytes == 2:
            kind = "16-bit (DeepSpeed; its fp32 masters are under optimizer)"
        else:
            kind = "fp32 parameters, the masters (cast to 16-bit for compute)"
        return _resident(counts.total * trainable_bytes, shard), (
            f"{_count(counts.total)} x {trainable_bytes} B {kind}" + _placement(shard.weights, shard.weights_offloaded)
        )
    adapters = counts.trainable * trainable_bytes
    adapters_text = f"adapters in {'16-bit' if trainable_bytes == 2 else 'fp32'}"
    if method.name == "lora":
        return _resident(counts.total * compute_bytes + adapters, shard), (
            f"frozen base in {precision} + {adapters_text}" + _placement(shard.weights, shard.weights_offloaded)
        )
    # qlora: bitsandbytes quantizes every linear weight but the output head; embeddings, norms,
    # biases and the head stay in the compute dtype.
    if method.compute_dtype == "auto":
        compute_name = precision
    else:
        compute_name = _dtype_name(method.compute_dtype, "method.compute_dtype")
    unquantized = (counts.total - counts.quantizable) * bytes_per_element(compute_name)
    if method.bits == 4:
        bits = 4 + QUANT_CONSTANT_BITS[bool(method.double_quant)]
    elif method.bits == 8:
        bits = 8  # LLM.int8 adds one fp32 scale per output row: negligible
    else:
        raise ValueError(f"method.bits={method.bits}: expected 4 or 8")
    quantized = int(counts.quantizable * bits / 8)
    base_text = f"{method.bits}-bit linear weights ({bits:.3g} bits each)"
    rest_text = f"embeddings/norms/head in {compute_name} + {adapters_text}"
    if kind == "fsdp":
        # FSDP2 does not shard bitsandbytes' packed weights here, so every GPU keeps the whole
        # quantized base; only the adapters and the unquantized rest are split.
        return quantized + _resident(unquantized + adapters, shard), (
            f"{base_text} replicated; {rest_text}" + _placement(shard.weights, shard.weights_offloaded)
        )
    return _resident(quantized + unquantized + adapters, shard), (
        f"{base_text}, {rest_text}" + _placement(shard.weights, shard.weights_offloaded)
    )


def _activations(config: PretrainedConfig, cfg, precision: str, fp32_residual: bool) -> Tuple[int, str]:
    s, b = cfg.train.seq_len, cfg.train.micro_batch_size
    h, num_layers, a = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * h
    scale = 2 if precision == "fp32" else 1  # the constants count 16-bit activations
    keeps_scores = cfg.model.attn_implementation == "eager"
    scores_per_token = SCORE_MATRIX_FACTOR * a * s if keeps_scores else 0
    per_token = LAYER_BYTES_PER_HIDDEN * h + LAYER_BYTES_PER_INTERMEDIATE * intermediate + scores_per_token
    one_layer = int(s * b * per_token * scale)
    attention_note = "eager attention: + s x s scores" if keeps_scores else f"{cfg.model.attn_implementation}: no s x s scores"
    if cfg.train.activation_checkpointing:
        # Only each layer's input survives the forward; backward recomputes one layer at a time.
        # The residual stream is fp32 when fp32 parameters run under autocast (DDP full fine-tune).
        residual_bytes = 4 if fp32_residual else 2
        kept_inputs = residual_bytes * s * b * h * num_layers
        return kept_inputs + one_layer, (
            f"checkpointing: {residual_bytes}*s*b*h*L layer inputs + one layer recomputed; {attention_note}"
        )
    return num_layers * one_layer, f"L*s*b*(30h+8.5i) (measured, HF layers); {attention_note}"


def _resident(num_bytes: int, shard: Sharding) -> int:
    """Parameter bytes left on the GPU after sharding (or offloading) them."""
    return 0 if shard.weights_offloaded else num_bytes // shard.weights


def _placement(ways: int, offloaded: bool = False) -> str:
    if offloaded:
        return "; in host memory (cpu_offload)"
    return f"; split over {ways} GPUs" if ways > 1 else "; replicated"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _plain_dict(node) -> dict:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {})
