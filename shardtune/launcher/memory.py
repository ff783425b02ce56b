"""Memory estimate for `shardtune plan` and the launcher's memory check, from the config alone.

Owns: reading the model's config (`model_config`: a pretrained model's own, or model.architecture) and
shape, counting parameters without allocating weights (`count_parameters`, on the meta device), and turning
(method, strategy, precision, batch shape, world size, nodes) into bytes (`estimate_memory` -> `MemoryEstimate`):
per GPU during a training step, per GPU while the model loads, and host RAM per node. Nothing here loads weights
or touches a GPU; the numbers are a planning aid built from published rules of thumb and a few measurements, not
a measurement.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from ..errors import ConfigError
from ..paths import looks_like_local_path
from ..precision import DTYPES, bytes_per_element
from ..strategy_registry import Sharding, strategy_spec
from ..attention import describe as describe_attention, implementation as attention_implementation
from ..trainer import fast_path, fp8, master_weights
from ..trainer.activations import describe as describe_checkpointing
from ..trainer.model import decoder_layers

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
# The loss upcasts logits to fp32 and keeps what backward needs, per logit: 12 B fit DDP peaks (autocast) on an
# H100; 8 B fit five FSDP2 peaks on an H200 within 4% (2026-12-02: llama3.1-8b LoRA, QLoRA and LoRA with CPU
# offload at 2 x 2048; llama3.2-3b full with and without offload at 1 x 2048). DeepSpeed: unmeasured, 12.
LOGITS_BYTES_PER_ELEMENT = {"fsdp": 8, "ddp": 12, "deepspeed": 12}
# Liger's fused linear cross-entropy per token and hidden unit: a chunk of fp32 logits about as large as the
# hidden states, and the fp32 gradient of the hidden states.
FUSED_LOSS_BYTES_PER_HIDDEN = 8
# Hub checkpoints come in safetensors files of at most about 5 GB (save_pretrained's usual max_shard_size).
HUB_CHECKPOINT_FILE_BYTES = 5 * 10**9
ATTENTION_KEEPING_SCORES = {"eager"}
# FSDP2 as the FSDP strategy wraps it (trainer/strategies/fsdp.py) keeps whole copies of some parameters in the
# compute dtype on top of its shards: the root module (embeddings, final norm, head; reshard_after_forward=False
# there) for the whole step, and the decoder layer that runs plus the next one, prefetched. ZeRO-3 likewise
# gathers the layer in use and prefetches the next.
GATHERED_LAYERS = 2
# Loading a QLoRA base: each rank reads one whole 16-bit linear weight and bitsandbytes quantizes it on the GPU;
# the input, the packed output and the quantizer's temporaries are alive together, about 1.5 x the input
# (an allowance to check against measured load peaks).
QUANTIZING_FACTOR = 1.5
# Host RAM of one worker before any model or data: measured 1.3 GiB on an H200 node (RSS after importing torch
# 2.11, transformers and peft, the CUDA context, an NCCL process group and a matmul), rounded up for datasets, the
# tokenized data and DeepSpeed or bitsandbytes where used. A CPU worker: 0.5 GiB measured after importing torch,
# transformers, peft and datasets, rounded up likewise.
WORKER_BASELINE_BYTES = {"cuda": 2 * GIB, "cpu": 1 * GIB}
LAUNCHER_BYTES = 1 * GIB  # the launcher (it tokenizes the data) and torchrun's agent, once per node
# DeepSpeed's ZeRO-Offload keeps per trainable parameter the fp32 master, both AdamW states and an fp32 copy of
# the gradient in host memory, where DeepSpeedCPUAdam steps them.
OFFLOADED_OPTIMIZER_BYTES = MASTER_COPY_BYTES + ADAM_STATES_BYTES + 4


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
    num_layers: int = 0  # decoder layers: the units FSDP shards and gathers (0 where none are found)
    layer_parameters: int = 0  # parameters of one decoder layer (the largest)
    layer_linear_weights: int = 0  # the linear weights of one decoder layer: what bitsandbytes quantizes in it
    largest_tensor: int = 0  # elements of the largest parameter (the embedding or head of these models)

    @property
    def root_parameters(self) -> int:
        """Parameters outside the decoder layers: embeddings, final norm, head (FSDP's root module)."""
        return self.num_parameters - self.num_layers * self.layer_parameters

    @property
    def largest_linear(self) -> int:
        """Elements of the largest linear weight but the head (the MLP's up/down projections)."""
        return max((layer.in_features * layer.out_features for layer in self.linear_layers), default=0)


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
        try:
            layers = decoder_layers(model)  # the same units the FSDP strategy shards
        except ValueError:  # an architecture without _no_split_modules: FSDP would refuse it; DDP sizes it fine
            layers = []
        _SHAPES[key] = ModelShape(
            num_parameters=sum(p.numel() for p in model.parameters()),
            linear_layers=linear_layers,
            num_layers=len(layers),
            layer_parameters=max((sum(p.numel() for p in layer.parameters()) for layer in layers), default=0),
            layer_linear_weights=max((_linear_weights(layer) for layer in layers), default=0),
            largest_tensor=max(p.numel() for p in model.parameters()),
        )
    return _SHAPES[key]


def _linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


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
    rank, dora_magnitude = method_cfg.rank, 1 if method_cfg.use_dora else 0  # read once: config nodes are slow
    return sum(rank * (layer.in_features + layer.out_features) + dora_magnitude * layer.out_features for layer in adapted)


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
class MemoryTable:
    """A small table of bytes (per GPU or per node): one row per component with a note saying what it assumes."""
    title: str
    unit: str  # the column's heading: GiB/GPU or GiB/node
    rows: List[Tuple[str, int, str]]  # (component, bytes, what it assumes)
    total: int
    total_note: str

    def bytes_of(self, name: str) -> int:
        return next(num_bytes for row_name, num_bytes, _ in self.rows if row_name == name)

    def format(self) -> str:
        return _format_table(self.title, self.unit, [(name, num_bytes / GIB, note) for name, num_bytes, note in self.rows]
                             + [("total", self.total / GIB, self.total_note)])


@dataclass
class MemoryEstimate:
    """Bytes per GPU in the steady state of training, one field per component, and a note per component saying
    what it assumes; then the peak per GPU while the model loads (`load`) and the host RAM per node (`host`)."""
    weights: int
    grads: int
    optimizer: int
    gathered: int
    activations: int
    logits: int
    cuda_context: int
    load: MemoryTable
    host: MemoryTable
    notes: Dict[str, str] = field(default_factory=dict)
    summary: str = ""
    fast_path: str = ""  # the kernels, compilation and activation checkpointing the estimate assumes
    num_parameters: int = 0
    num_trainable_parameters: int = 0

    COMPONENTS = ("weights", "grads", "optimizer", "gathered", "activations", "logits", "cuda_context")

    @property
    def total(self) -> int:
        """The steady state: bytes per GPU during a training step."""
        return sum(getattr(self, name) for name in self.COMPONENTS)

    @property
    def peak_per_gpu(self) -> int:
        """What a GPU must hold at its fullest: while the model loads or while it trains."""
        return max(self.load.total, self.total)

    def rows(self) -> List[Tuple[str, float, str]]:
        """(component, GiB per GPU, what it assumes) of the steady state, ending with the total."""
        rows = [(name, getattr(self, name) / GIB, self.notes.get(name, "")) for name in self.COMPONENTS]
        # Summing is conservative: with set_to_none, gradients fill in as backward frees activations;
        # DDP's gradient buckets and gradient accumulation keep them all alive, though.
        return rows + [("total", self.total / GIB, "sum of the rows (conservative), before allocator fragmentation")]

    def format(self) -> str:
        lines = [self.summary] if self.summary else []
        lines.append(_format_table("per GPU, training step (steady state)", "GiB/GPU", self.rows()))
        lines.append(self.load.format())
        lines.append(self.host.format())
        which = "loading" if self.load.total > self.total else "training step"
        lines.append(f"peak per GPU: {self.peak_per_gpu / GIB:.2f} GiB (the larger of loading and the training step: "
                     f"{which}); host RAM per node: {self.host.total / GIB:.2f} GiB")
        return "\n".join(lines)


def _format_table(title: str, unit: str, rows: List[Tuple[str, float, str]]) -> str:
    lines = [title, f"{'component':<13} {unit:>8}  assumes"]
    for name, gib, note in rows:
        if name == "total":
            lines.append("-" * 13 + " " + "-" * 8)
        lines.append(f"{name:<13} {gib:>8.2f}  {note}")
    return "\n".join(lines)


def _dtype_name(value: str, key: str) -> str:
    if value not in DTYPES:
        raise ValueError(f"{key}={value!r}: expected auto, bf16, fp16 or fp32")
    return value


@dataclass(frozen=True)
class _Run:
    """What every component is computed from: the config and the facts derived from it once."""
    cfg: Any
    world_size: int
    ranks_per_node: int
    device: str  # cuda, or cpu for CPU workers (their "GPU" memory is host memory)
    precision: str  # bf16, fp16 or fp32
    compute_bytes: int
    shape: ModelShape
    counts: ParameterCounts
    kind: str  # ddp, fsdp or deepspeed
    shard: Sharding
    # DeepSpeed's bf16/fp16 modes cast the whole module to 16-bit and keep fp32 masters inside the
    # optimizer; DDP and FSDP2 keep fp32 parameters (they are the masters) and cast for compute.
    deepspeed_16bit: bool
    # A 16-bit full fine-tune on DDP with one rank: 16-bit weights, fp32 masters and gradients
    # (trainer/master_weights.py).
    master_weights: bool

    @property
    def method(self):
        return self.cfg.method

    @property
    def trainable_bytes(self) -> int:
        """Bytes per trainable parameter of the model itself."""
        return 2 if self.deepspeed_16bit or self.master_weights else 4

    @property
    def grad_bytes(self) -> int:
        return 2 if self.deepspeed_16bit else 4

    @property
    def load_bytes(self) -> int:
        """Bytes per parameter of the model as the trainer loads it: fp32 masters for a full fine-tune, the compute
        dtype for a frozen LoRA base (trainer/model.py load_dtype)."""
        return 4 if self.method.name == "full" else self.compute_bytes

    def node_share(self, num_bytes: int) -> int:
        """This node's part of `num_bytes` split evenly over the world's ranks."""
        return num_bytes * self.ranks_per_node // self.world_size


def estimate_memory(cfg, world_size: int) -> MemoryEstimate:
    """Memory of training `cfg` data-parallel over `world_size` ranks: per GPU (training step and loading) and
    host RAM per node (cfg.launcher.nnodes nodes)."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: needs at least one GPU")
    # `plan` is about GPU memory, where auto means bf16.
    precision = "bf16" if cfg.train.precision == "auto" else _dtype_name(cfg.train.precision, "train.precision")
    compute_bytes = bytes_per_element(precision)
    config = model_config(cfg.model)
    counts = count_parameters(config, cfg.method, cfg.model.trust_remote_code)
    strategy = strategy_spec(cfg.strategy)
    run = _Run(cfg=cfg, world_size=world_size, ranks_per_node=max(1, world_size // max(1, cfg.launcher.nnodes)),
               device="cpu" if cfg.launcher.device == "cpu" else "cuda", precision=precision,
               compute_bytes=compute_bytes, shape=model_shape(config, cfg.model.trust_remote_code), counts=counts,
               kind=strategy.kind, shard=strategy.sharding(cfg.strategy, world_size),
               deepspeed_16bit=strategy.kind == "deepspeed" and compute_bytes == 2,
               master_weights=master_weights.applies(strategy.kind, cfg.method.name, world_size, precision))
    shard, method = run.shard, cfg.method

    # Under DDP on several ranks a full fine-tune keeps fp32 parameters and autocast computes in 16-bit:
    # the hidden states between layers stay fp32, and autocast's 16-bit weight copies are saved for
    # backward (with checkpointing they are recomputed per layer instead).
    ddp_autocast_full = method.name == "full" and run.kind == "ddp" and compute_bytes == 2 and not run.master_weights
    weights, weights_note = _weights(run)
    if ddp_autocast_full and not cfg.train.activation_checkpointing:
        weights += counts.total * 2
        weights_note += "; + 2 B/param autocast copies held until backward"
    grad_bytes = run.grad_bytes
    grads_kind = ("DeepSpeed 16-bit grads" if run.deepspeed_16bit
                  else "fp32, each 16-bit gradient added in as it is ready" if run.master_weights
                  else "fp32, reduced in fp32")
    grads = 0 if shard.grads_offloaded else counts.trainable * grad_bytes // shard.grads
    grads_note = (
        "in host memory (FSDP cpu_offload)" if shard.grads_offloaded
        else f"{_count(counts.trainable)} trainable x {grad_bytes} B ({grads_kind})" + _placement(shard.grads, world_size)
    )
    masters = run.deepspeed_16bit or run.master_weights
    optimizer_bytes = ADAM_STATES_BYTES + (MASTER_COPY_BYTES if masters else 0)
    if shard.optimizer_offloaded:
        optimizer, optimizer_note = 0, "AdamW states and fp32 masters in host memory (CPU optimizer step)"
    else:
        optimizer = counts.trainable * optimizer_bytes // shard.optimizer
        optimizer_note = (
            f"AdamW: 2 fp32 states{' + fp32 master copy' if masters else ''} = {optimizer_bytes} B/param"
            + _placement(shard.optimizer, world_size)
        )
    gathered, gathered_note = _gathered(run)
    activations, offloaded_activations, activations_note = _activations(
        config, cfg, precision, ddp_autocast_full or compute_bytes == 4, attention_implementation(cfg, run.device))
    tokens = cfg.train.micro_batch_size * cfg.train.seq_len
    fast = fast_path.choose(cfg.train, cfg.method, run.device, config.model_type)
    if fast.fused_loss:
        # Liger's fused linear cross-entropy: logits only for a chunk of the tokens at a time (about b*s*h of them),
        # and the fp32 gradients of the hidden states and, when the head trains, of the head.
        head_grad = config.vocab_size * config.hidden_size * 4 if method.name == "full" else 0
        logits = tokens * config.hidden_size * FUSED_LOSS_BYTES_PER_HIDDEN + head_grad
        logits_note = (f"fused linear cross-entropy: b*s*h*{FUSED_LOSS_BYTES_PER_HIDDEN} B (logit chunks, fp32 "
                       f"gradients of the hidden states){' + fp32 gradient of the head' if head_grad else ''}")
    else:
        # The 16-bit weights of master_weights compute like FSDP2's gathered ones, without autocast.
        logit_bytes = LOGITS_BYTES_PER_ELEMENT["fsdp" if run.master_weights else run.kind]
        logits = tokens * config.vocab_size * logit_bytes
        logits_note = (
            f"b*s*vocab*{logit_bytes} B: fp32 log-softmax + its gradients in the loss (vocab "
            f"{config.vocab_size}); often the largest term for big vocabularies"
        )
    steady = weights + grads + optimizer + gathered + activations + logits + CUDA_CONTEXT_BYTES
    method_text = method.name if method.name == "full" else f"{method.name} r={method.rank}"
    if method.name == "qlora":
        method_text += f" {method.bits}-bit"
    return MemoryEstimate(
        weights=weights, grads=grads, optimizer=optimizer, gathered=gathered, activations=activations, logits=logits,
        cuda_context=CUDA_CONTEXT_BYTES, load=_load_peak(run),
        host=_host_per_node(run, steady - CUDA_CONTEXT_BYTES, offloaded_activations),
        fast_path=f"{fast.describe()}; {fp8.describe(*fp8.choose(cfg.train, run.device, method.name, run.kind))}; "
                  f"{describe_checkpointing(cfg.train, run.device, fast.compile_blocks)}; "
                  f"{describe_attention(cfg, run.device)}",
        notes={
            "weights": weights_note, "grads": grads_note, "optimizer": optimizer_note, "gathered": gathered_note,
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


def _parameter_bytes(run: _Run, trainable_bytes: int) -> Tuple[int, str]:
    """Bytes of every parameter of the model, unsharded, as the strategy keeps them (the trainable ones in
    `trainable_bytes` each), and what they are."""
    method, counts = run.method, run.counts
    if method.name == "full":
        if run.compute_bytes == 4:
            kind = "fp32"
        elif trainable_bytes == 2:
            kind = "16-bit (the fp32 masters are under optimizer)"
        else:
            kind = "fp32 parameters, the masters (cast to 16-bit for compute)"
        return counts.total * trainable_bytes, f"{_count(counts.total)} x {trainable_bytes} B {kind}"
    adapters = counts.trainable * trainable_bytes
    adapters_text = f"adapters in {'16-bit' if trainable_bytes == 2 else 'fp32'}"
    if method.name == "lora":
        return counts.total * run.compute_bytes + adapters, f"frozen base in {run.precision} + {adapters_text}"
    # qlora: bitsandbytes quantizes every linear weight but the output head; embeddings, norms,
    # biases and the head stay in the compute dtype.
    unquantized = (counts.total - counts.quantizable) * bytes_per_element(_qlora_compute_dtype(run))
    bits = _quantized_bits(method)
    quantized = int(counts.quantizable * bits / 8)
    return quantized + unquantized + adapters, (
        f"{method.bits}-bit linear weights ({bits:.3g} bits each), embeddings/norms/head in "
        f"{_qlora_compute_dtype(run)} + {adapters_text}"
    )


def _qlora_compute_dtype(run: _Run) -> str:
    if run.method.compute_dtype == "auto":
        return run.precision
    return _dtype_name(run.method.compute_dtype, "method.compute_dtype")


def _quantized_bits(method) -> float:
    """Bits per quantized weight, the quantization constants included."""
    if method.bits == 4:
        return 4 + QUANT_CONSTANT_BITS[bool(method.double_quant)]
    if method.bits == 8:
        return 8  # LLM.int8 adds one fp32 scale per output row: negligible
    raise ValueError(f"method.bits={method.bits}: expected 4 or 8")


def _weights(run: _Run) -> Tuple[int, str]:
    """Bytes of parameters resident on one GPU, and the note saying why. Every strategy shards all of them, the
    quantized QLoRA base included (under FSDP each rank keeps its shard of the packed 4-bit storage)."""
    shard = run.shard
    if shard.weights_offloaded and run.kind == "deepspeed":
        return 0, "~0: offload_param keeps parameters in host memory; only the layers in use are gathered"
    num_bytes, note = _parameter_bytes(run, run.trainable_bytes)
    return _resident(num_bytes, shard), note + _placement(shard.weights, run.world_size, shard.weights_offloaded)


def _gathered(run: _Run) -> Tuple[int, str]:
    """Whole (unsharded) parameters a sharding strategy keeps on the GPU during a step, on top of its shards."""
    shape = run.shape
    layers = min(GATHERED_LAYERS, shape.num_layers)
    dtype = "16-bit" if run.compute_bytes == 2 else "fp32"
    if run.kind == "fsdp":
        layers_text = f"{layers} decoder layers (the one running + the next, prefetched)"
        if not run.cfg.strategy.reshard_after_forward:  # each layer stays gathered from its forward to its backward
            layers, layers_text = shape.num_layers, "every decoder layer (reshard_after_forward=false)"
        root = shape.root_parameters * run.compute_bytes
        # Each layer's gradients are whole, in the reduce dtype, until its reduce-scatter.
        reduce_bytes = 4 if run.compute_bytes == 4 or run.cfg.strategy.reduce_dtype == "fp32" else 2
        layer_grads = _layer_trainable(run) * reduce_bytes
        return root + layers * _gathered_layer_bytes(run) + layer_grads, (
            f"FSDP2: root (embeddings, norm, head) kept whole all step + {layers_text}, in {dtype}; + one layer's "
            f"gradients before their reduce-scatter"
        )
    if run.kind == "deepspeed" and run.cfg.strategy.stage == 3:
        head = shape.largest_tensor * run.compute_bytes
        return head + layers * _gathered_layer_bytes(run), (
            f"ZeRO-3: {layers} decoder layers (in use + prefetched) + the largest tensor (embedding/head) gathered, "
            f"in {dtype}"
        )
    return 0, f"none: {run.cfg.strategy.name} keeps its parameters whole already (under weights)"


def _layer_trainable(run: _Run) -> int:
    """Trainable parameters of one decoder layer: all of them for a full fine-tune, else its share of the
    adapters."""
    if run.method.name == "full":
        return run.shape.layer_parameters
    return run.counts.trainable // max(1, run.shape.num_layers)


def _gathered_layer_bytes(run: _Run) -> int:
    """One decoder layer all-gathered for compute: in the compute dtype, or packed for a QLoRA base, which
    dequantizes one linear weight at a time for its matmul."""
    shape, compute = run.shape, run.compute_bytes
    adapters = 0 if run.method.name == "full" else _layer_trainable(run) * compute
    if run.method.name != "qlora":
        return shape.layer_parameters * compute + adapters
    quantized = int(shape.layer_linear_weights * _quantized_bits(run.method) / 8)
    unquantized = (shape.layer_parameters - shape.layer_linear_weights) * compute
    return quantized + unquantized + adapters + shape.largest_linear * compute


def _load_peak(run: _Run) -> MemoryTable:
    """Bytes on one GPU while the model loads, before the optimizer, gradients or activations exist."""
    weights, weights_note = _load_weights(run)
    transient, transient_note = _load_transient(run)
    rows = [("weights", weights, weights_note), ("transient", transient, transient_note),
            ("cuda_context", CUDA_CONTEXT_BYTES, "fixed allowance, as above")]
    return MemoryTable("per GPU, while the model loads", "GiB/GPU", rows, weights + transient + CUDA_CONTEXT_BYTES,
                       "sum of the rows")


def _load_weights(run: _Run) -> Tuple[int, str]:
    if run.kind == "deepspeed" and run.cfg.strategy.stage < 3:
        # The trainer moves the whole loaded model to the GPU; DeepSpeed casts it to 16-bit afterwards.
        return run.counts.total * run.load_bytes, (
            f"the whole model in {'fp32' if run.load_bytes == 4 else run.precision}, moved to the GPU before DeepSpeed "
            f"casts it to 16-bit"
        )
    if run.kind == "ddp":
        num_bytes, note = _parameter_bytes(run, 4)  # the adapters (fp32) are added before the model moves
        return num_bytes, note + "; every rank loads the whole model"
    weights, _ = _weights(run)  # FSDP and ZeRO-3 load straight into each rank's shards
    return weights, "this rank's shards, as under weights above (loaded straight into them)"


def _load_transient(run: _Run) -> Tuple[int, str]:
    """A whole tensor passing through the GPU on its way into the shards (or into the quantized base)."""
    linear = run.shape.largest_linear * run.compute_bytes
    if run.method.name == "qlora" and run.kind in ("fsdp", "ddp"):
        return int(linear * QUANTIZING_FACTOR), (
            f"one 16-bit linear weight quantized on the GPU (x{QUANTIZING_FACTOR}: input, packed output, temporaries)"
        )
    if run.kind == "fsdp":
        return linear, "one linear weight read whole before its slices go to their ranks"
    if run.kind == "deepspeed" and run.cfg.strategy.stage == 3:
        return run.shape.largest_tensor * run.compute_bytes, (
            "the largest tensor (embedding/head) gathered while transformers copies it in (zero.Init)"
        )
    return 0, "none: the model moves to the GPU one tensor at a time"


def _host_per_node(run: _Run, steady_without_context: int, offloaded_activations: int) -> MemoryTable:
    """Host RAM of one node: its processes, the model copies its ranks hold while loading, and the training
    state offloaded to it (CPU workers: their whole training state)."""
    processes = run.ranks_per_node * WORKER_BASELINE_BYTES[run.device] + LAUNCHER_BYTES
    loading, loading_note = _host_loading(run)
    offloaded, offloaded_note = _host_offloaded(run)
    if offloaded_activations:  # train.activation_offload
        offloaded_note = ((f"{offloaded_note}; + " if offloaded else "")
                          + f"{run.ranks_per_node} rank(s) x the checkpointed layers' kept activations")
        offloaded += run.ranks_per_node * offloaded_activations
    rows = [("processes", processes, f"{run.ranks_per_node} worker(s) x {WORKER_BASELINE_BYTES[run.device] / GIB:.0f} "
                                     f"GiB (Python, torch, {'CUDA, NCCL, ' if run.device == 'cuda' else ''}libraries) "
                                     f"+ {LAUNCHER_BYTES / GIB:.0f} GiB launcher and torchrun"),
            ("loading", loading, loading_note), ("offloaded", offloaded, offloaded_note)]
    training = 0
    if run.device == "cpu":
        training = run.ranks_per_node * steady_without_context
        rows.append(("training", training, "CPU workers: each one's training step (the first table) is in host "
                                           "memory"))
    # The copies made while loading are gone (moved to the GPU, or read into their shards) before the first
    # optimizer step creates the offloaded states; CPU workers train in the memory they loaded into.
    total = processes + max(loading, offloaded + training)
    return MemoryTable(f"host RAM per node ({run.ranks_per_node} worker(s))", "GiB/node", rows, total,
                       "processes + the larger of loading and the rest (loading ends before training starts)")


def _host_loading(run: _Run) -> Tuple[int, str]:
    ranks, method = run.ranks_per_node, run.method
    one_tensor = run.shape.largest_tensor * run.load_bytes
    if run.kind == "fsdp" and method.name != "qlora":
        # The safetensors reader maps each file while it reads this rank's slices of it: those pages count in the
        # rank's resident memory until the file closes. Offloaded shards are filled in host memory meanwhile.
        mapped = ranks * _checkpoint_file_bytes(run) // run.world_size
        filled = run.node_share(_parameter_bytes(run, run.load_bytes)[0]) if run.cfg.strategy.cpu_offload else 0
        return mapped + filled, ("each rank maps its slices of one checkpoint file at a time"
                                 + ("; and fills its offloaded shards" if filled else "; its shards go to the GPU"))
    if run.kind == "fsdp" or (run.kind == "ddp" and method.name == "qlora"):
        where = "its shards go to the GPU" if run.kind == "fsdp" else "bitsandbytes quantizes it onto the GPU"
        return ranks * one_tensor, f"each rank reads one weight at a time; {where}"
    dtype = "fp32" if run.load_bytes == 4 else run.precision
    if run.kind == "deepspeed" and run.cfg.strategy.stage == 3:
        return (ranks + 1) * one_tensor, (
            "each rank gathers one weight at a time, which rank 0 reads and ZeRO-3 partitions again")
    adapters = run.counts.trainable * 4 if method.name != "full" else 0  # peft adds them before the model moves
    copy = run.counts.total * run.load_bytes + adapters
    return ranks * copy, f"each of the {ranks} rank(s) loads the whole model in {dtype} into host memory first"


def _host_offloaded(run: _Run) -> Tuple[int, str]:
    """The node's share of the training state offloaded to host memory."""
    counts, shard = run.counts, run.shard
    share = f"this node's {run.ranks_per_node} of {run.world_size} shares"
    if run.kind == "fsdp" and run.cfg.strategy.cpu_offload:
        parameters, _ = _parameter_bytes(run, 4)
        # + one fp32 copy of the trainable parameters: the temporaries of torch's AdamW step on the CPU (measured:
        # llama3.2-3b full, 59.6 GiB host peak for 47.9 GiB of offloaded state, H200 node, 2026-12-02).
        state = parameters + counts.trainable * (4 + ADAM_STATES_BYTES + 4)
        return run.node_share(state), (f"FSDP cpu_offload: parameters, fp32 gradients, AdamW states and the CPU "
                                       f"step's temporaries; {share}")
    offloaded, parts = 0, []
    if run.kind == "deepspeed" and shard.optimizer_offloaded:
        offloaded += counts.trainable * OFFLOADED_OPTIMIZER_BYTES
        parts.append(f"fp32 masters, AdamW states and fp32 gradients ({OFFLOADED_OPTIMIZER_BYTES} B/param)")
    if run.kind == "deepspeed" and shard.weights_offloaded:
        parameters, _ = _parameter_bytes(run, run.trainable_bytes)
        offloaded += parameters
        parts.append(f"{run.trainable_bytes * 8}-bit parameters")
    if not parts:
        return 0, "none: nothing is offloaded"
    return run.node_share(offloaded), f"DeepSpeed offload: {' + '.join(parts)}; {share}"


def _checkpoint_file_bytes(run: _Run) -> int:
    """The largest safetensors file of the model: measured for a local directory, else a hub checkpoint's usual
    size (16-bit weights in files of at most about 5 GB)."""
    name_or_path = run.cfg.model.name_or_path
    if name_or_path and looks_like_local_path(name_or_path) and os.path.isdir(os.path.expanduser(name_or_path)):
        sizes = [entry.stat().st_size for entry in os.scandir(os.path.expanduser(name_or_path))
                 if entry.name.endswith(".safetensors")]
        if sizes:
            return max(sizes)
    return min(HUB_CHECKPOINT_FILE_BYTES, run.counts.total * 2)


def _activations(config: PretrainedConfig, cfg, precision: str, fp32_residual: bool,
                 attention: str) -> Tuple[int, int, str]:
    """(bytes on the GPU, bytes offloaded to host memory per rank, what it assumes) of the activations one micro
    batch keeps for backward, with `attention` the implementation transformers runs."""
    train = cfg.train
    s, b = train.seq_len, train.micro_batch_size
    h, num_layers, a = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * h
    scale = 2 if precision == "fp32" else 1  # the constants count 16-bit activations
    keeps_scores = attention == "eager"
    scores_per_token = SCORE_MATRIX_FACTOR * a * s if keeps_scores else 0
    per_token = LAYER_BYTES_PER_HIDDEN * h + LAYER_BYTES_PER_INTERMEDIATE * intermediate + scores_per_token
    one_layer = int(s * b * per_token * scale)
    attention_note = "eager attention: + s x s scores" if keeps_scores else f"{attention}: no s x s scores"
    if not train.activation_checkpointing:
        return num_layers * one_layer, 0, f"L*s*b*(30h+8.5i) (measured, HF layers); {attention_note}"
    # Each checkpointed layer keeps its input (the residual stream is fp32 when fp32 parameters run under autocast,
    # as a DDP full fine-tune does), and with the `ops` policy its matmul and attention outputs too: q, k, v,
    # attention, o, gate, up, down. Backward recomputes one layer at a time.
    checkpointed = -(-num_layers // train.activation_checkpointing_every)
    residual_bytes = 4 if fp32_residual else 2
    kept_per_token = residual_bytes * h
    kept_note = f"{residual_bytes}*s*b*h layer inputs"
    if train.activation_checkpointing_policy == "ops":
        kv_width = h * config.num_key_value_heads // a if getattr(config, "num_key_value_heads", None) else h
        kept_per_token += 2 * scale * (5 * h + 2 * kv_width + 2 * intermediate)
        kept_note = f"{residual_bytes}*s*b*h layer inputs + matmul and attention outputs"
    kept = s * b * kept_per_token * checkpointed
    on_gpu = (num_layers - checkpointed) * one_layer + one_layer
    layers_note = "every layer" if checkpointed == num_layers else f"{checkpointed} of {num_layers} layers"
    if train.activation_offload:
        return on_gpu, kept, f"checkpointing {layers_note}: {kept_note} in host memory; one layer recomputed"
    return on_gpu + kept, 0, f"checkpointing {layers_note}: {kept_note} + one layer recomputed; {attention_note}"


def _resident(num_bytes: int, shard: Sharding) -> int:
    """Parameter bytes left on the GPU after sharding (or offloading) them."""
    return 0 if shard.weights_offloaded else num_bytes // shard.weights


def _placement(ways: int, world_size: int, offloaded: bool = False) -> str:
    if offloaded:
        return "; in host memory (cpu_offload)"
    if ways > 1:
        return f"; split over {ways} GPUs"
    return "; replicated" if world_size > 1 else ""


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _plain_dict(node) -> dict:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {})
