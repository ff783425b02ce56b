"""Cross-field config rules, checked by the launcher before any worker starts.

OmegaConf already refuses unknown keys and wrong types against the schema (config.py). What it cannot
see are rules that join several fields ("zero3 is for full fine-tuning"); they live here, and each
error names the key a user has to change.
"""
import logging
import os
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..cluster.rendezvous import split_endpoint
from ..cluster.slurm import check_time_limit
from ..config import AUTO, METHOD_SCHEMAS, ClusterConfig, DataConfig, typed_config
from ..data.formats import FORMATS
from ..data.segments import EOS_POLICIES, ROLES
from ..data.pipeline import sources
from ..data.sources import looks_local
from ..data.tokenize import TOO_LONG
from ..errors import ConfigError
from ..paths import looks_like_local_path
from ..precision import DTYPES, PRECISIONS
from ..strategy_registry import STRATEGIES, strategies_for, strategy_spec
from ..trainer.activations import POLICIES as CHECKPOINT_POLICIES
from .. import attention
from ..trainer import fp8
from ..trainer.fast_path import COMPILE_CHOICES, KERNEL_CHOICES, LORA_KERNEL_CHOICES
from ..trainer.fp8 import CHOICES as FP8_CHOICES
from ..trainer.micro_batch_trial import TRIAL_STRATEGY_KINDS

SCHEDULERS = ("cosine", "linear", "constant")


def validate(cfg, device_type: str, world_size: int) -> None:
    """Raise ConfigError for the first rule `cfg` breaks. `device_type` is 'cuda' or 'cpu'."""
    _validate_schema(cfg)
    _validate_model(cfg.model)
    _validate_method_strategy(cfg, device_type)
    _advise_one_gpu_zero(cfg.strategy, device_type, world_size)
    _validate_train(cfg.train, device_type, world_size)
    fp8.choose(cfg.train, device_type, cfg.method.name, strategy_spec(cfg.strategy).kind)  # refuses what cannot be
    attention.choose(cfg, device_type)  # refuses flash_attention_2 without its package
    _validate_micro_batch_trial(cfg, device_type)
    _validate_optim(cfg.optim)
    _validate_data(cfg.data)
    _validate_cluster(cfg.cluster)  # first: cluster=slurm derives launcher fields from it
    _validate_launcher(cfg.launcher, device_type)
    if cfg.logger.name not in ("none", "wandb"):
        raise ConfigError("logger.name", f"unknown logger {cfg.logger.name!r}; choose none or wandb")
    if cfg.resume not in ("none", "auto") and not Path(cfg.resume).is_dir():
        raise ConfigError("resume", f"expected none, auto or a checkpoint directory; {cfg.resume!r} is not a directory")


def _validate_schema(cfg) -> None:
    """Refuse keys the schema lacks. Hydra's `+key=value` appends them even to structured configs; the
    workers' load_resolved would then refuse them only after torchrun had started."""
    try:
        typed_config(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(error.full_key or "config", f"not accepted by the schema: {str(error).splitlines()[0]}") from error


def _validate_launcher(launcher, device_type: str) -> None:
    for key in ("gpu_memory_gib", "host_memory_gib"):
        if launcher[key] is not None and launcher[key] <= 0:
            raise ConfigError(f"launcher.{key}", f"must be > 0 (GiB), or null for this machine's; got {launcher[key]}")
    if launcher.gpu_memory_gib is not None and device_type == "cpu":
        logging.getLogger("shardtune").warning("launcher.gpu_memory_gib is ignored: the run has CPU workers, whose "
                                               "memory is the host's (launcher.host_memory_gib)")
    if launcher.nnodes < 1:
        raise ConfigError("launcher.nnodes", f"must be >= 1, got {launcher.nnodes}")
    if not 0 <= launcher.node_rank < launcher.nnodes:
        raise ConfigError("launcher.node_rank", f"must be in [0, nnodes={launcher.nnodes}), got {launcher.node_rank}")
    if launcher.min_nodes is not None:
        if not launcher.rdzv_endpoint:
            raise ConfigError("launcher.min_nodes", "elastic node counts need the c10d rendezvous: set launcher.rdzv_endpoint")
        if not 1 <= launcher.min_nodes <= launcher.nnodes:
            raise ConfigError("launcher.min_nodes", f"must be in [1, nnodes={launcher.nnodes}], got {launcher.min_nodes}")
    if launcher.rdzv_endpoint:
        split_endpoint(launcher.rdzv_endpoint)
    if launcher.max_restarts < 0:
        raise ConfigError("launcher.max_restarts", f"must be >= 0, got {launcher.max_restarts}")
    for key in ("collective_timeout_s", "setup_timeout_s"):
        if launcher[key] <= 0:
            raise ConfigError(f"launcher.{key}", f"must be > 0 seconds, got {launcher[key]}")


def _validate_cluster(cluster) -> None:
    if cluster.name not in ("local", "slurm"):
        raise ConfigError("cluster.name", f"unknown cluster {cluster.name!r}; choose local or slurm")
    if cluster.name == "local":
        defaults = OmegaConf.structured(ClusterConfig)
        for key in (key for key in cluster if key != "name" and cluster[key] != defaults[key]):
            logging.getLogger("shardtune").warning("cluster.%s is a Slurm setting, ignored with cluster=local", key)
    if cluster.name == "slurm":
        for key in ("nodes", "signal_before_limit_s"):
            if cluster[key] < 1:
                raise ConfigError(f"cluster.{key}", f"must be >= 1, got {cluster[key]}")
        if not 0 <= cluster.rdzv_port < 65536:
            raise ConfigError("cluster.rdzv_port", f"must be a port number, or 0 for a free one; got {cluster.rdzv_port}")
        if cluster.gpus_per_node < 0:
            raise ConfigError("cluster.gpus_per_node", f"must be >= 0, got {cluster.gpus_per_node}")
        check_time_limit(cluster)


def _validate_data(data) -> None:
    formats = (*FORMATS, "random_tokens")
    if data.format not in formats:
        raise ConfigError("data.format", f"expected one of {', '.join(formats)}, got {data.format!r}")
    if data.too_long not in TOO_LONG:
        raise ConfigError("data.too_long", f"expected one of {', '.join(TOO_LONG)}, got {data.too_long!r}")
    for key in ("val_fraction", "test_fraction"):
        if not 0 <= data[key] < 1:
            raise ConfigError(f"data.{key}", f"must be in [0, 1), got {data[key]}")
    if data.val_fraction + data.test_fraction >= 1:
        raise ConfigError("data.test_fraction", "val_fraction + test_fraction must be < 1: no training rows left")
    if data.num_proc < 1:
        raise ConfigError("data.num_proc", f"must be >= 1, got {data.num_proc}")
    _validate_masking(data)
    if data.format == "random_tokens":
        if data.num_rows < 1:
            raise ConfigError("data.num_rows", "random_tokens needs num_rows >= 1")
        return
    if bool(data.path) == bool(data.mix):
        raise ConfigError("data.path", "give a dataset in data.path, or several in data.mix, not both"
                          if data.mix else "no dataset: set data.path (a file, a directory or a hub dataset name)")
    prefixes = [f"data.mix.{i}." for i in range(len(data.mix))] or ["data."]
    for prefix, source in zip(prefixes, sources(data)):  # format and columns already defaulted to data.*
        fmt, columns = source["format"], source["columns"]
        if fmt not in FORMATS:
            raise ConfigError(f"{prefix}format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
        if data.too_long == "split" and fmt != "completion":
            raise ConfigError("data.too_long", f"split cuts plain text into chunks, for format=completion; {prefix}format "
                                               f"is {fmt}, whose chunks would lose their prompts: use keep_response")
        unknown = set(columns) - set(FORMATS[fmt].columns)
        if unknown:
            raise ConfigError(f"{prefix}columns", f"format {fmt} maps only {', '.join(FORMATS[fmt].columns)}; "
                                                  f"got {sorted(unknown)}")
        if looks_local(source["path"]) and not Path(os.path.expanduser(source["path"])).exists():
            raise ConfigError(f"{prefix}path", f"file or directory not found: {source['path']}")
        if source["weight"] <= 0:
            raise ConfigError(f"{prefix}weight", f"must be > 0, got {source['weight']}")


def _validate_masking(data) -> None:
    """The training-control settings, and a warning for each one the chosen formats ignore."""
    unknown = sorted(set(data.train_on_roles) - set(ROLES))
    if unknown:
        raise ConfigError("data.train_on_roles", f"unknown role(s) {unknown}; roles are {', '.join(ROLES)}")
    if data.train_on_eos not in EOS_POLICIES:
        raise ConfigError("data.train_on_eos", f"expected one of {', '.join(EOS_POLICIES)}, got {data.train_on_eos!r}")
    if data.on_bad_row not in ("error", "skip"):
        raise ConfigError("data.on_bad_row", f"expected error or skip, got {data.on_bad_row!r}")
    defaults = OmegaConf.structured(DataConfig)
    changed = [key for key in ("train_on_roles", "train_on_eos", "mask_history", "system_prompt")
               if data[key] != defaults[key]]
    warn = logging.getLogger("shardtune").warning
    if not data.mask_prompt:
        for key in (key for key in changed if key != "system_prompt"):
            warn("data.%s is ignored: data.mask_prompt=false trains on every token", key)
        changed = [key for key in changed if key == "system_prompt"]
    formats = {source["format"] for source in sources(data)} if data.path or data.mix else {data.format}
    # What each format reads: completion has no roles or turns, segments carry their own labels.
    reads = {"alpaca": set(changed), "chat": set(changed), "completion": {"train_on_eos"}, "segments": set()}
    for key in changed:
        if not any(key in reads.get(fmt, ()) for fmt in formats):
            warn("data.%s is ignored: format %s does not use it", key, "/".join(sorted(formats)))


def validate_split_sizes(train, num_train_rows: int, world_size: int) -> None:
    """After tokenizing: every rank needs a micro-batch of training rows, and grad_accum of them per step (the
    workers would otherwise fail after starting)."""
    needed = train.micro_batch_size * world_size
    if num_train_rows < needed:
        raise ConfigError("train.micro_batch_size", f"{train.micro_batch_size} rows per micro-batch on each of "
                          f"{world_size} rank(s) needs at least {needed} training rows, but the train split has "
                          f"{num_train_rows}; lower train.micro_batch_size or add data")
    per_rank = num_train_rows // world_size // train.micro_batch_size
    if per_rank < train.grad_accum:
        raise ConfigError("train.grad_accum", f"{train.grad_accum} micro-batches per step, but the train split's "
                          f"{num_train_rows} rows give each of {world_size} rank(s) only {per_rank} micro-batch(es) "
                          f"of {train.micro_batch_size}; lower train.grad_accum or train.micro_batch_size")


def _validate_model(model) -> None:
    if model.init not in ("pretrained", "random"):
        raise ConfigError("model.init", f"expected pretrained or random, got {model.init!r}")
    if model.init == "random" and not model.architecture:
        raise ConfigError("model.architecture", "init=random needs the architecture fields (model_type, hidden_size, ...)")
    if model.init == "random" and model.tokenizer and model.name_or_path:
        # e.g. model=tiny model.name_or_path=X: the group's random model and tokenizer would train, X never read.
        raise ConfigError("model.name_or_path", f"{model.name_or_path} would be ignored: model.init=random builds random "
                                                "weights from model.architecture and model.tokenizer is set. To fine-tune "
                                                "it, choose model=pretrained (or model.init=pretrained); else set "
                                                "model.name_or_path=null")
    if model.init == "pretrained":
        if not model.name_or_path:
            raise ConfigError("model.name_or_path", "set a hub id or a local model directory (or model.init=random)")
        path = os.path.expanduser(model.name_or_path)
        if looks_like_local_path(model.name_or_path) and not Path(path, "config.json").is_file():
            raise ConfigError("model.name_or_path", f"{model.name_or_path} is not a model directory (no config.json)")
    tokenizer = model.tokenizer or model.name_or_path
    if not tokenizer:
        raise ConfigError("model.tokenizer", "set a tokenizer (hub id or directory) for a randomly initialised model")
    if looks_like_local_path(tokenizer) and not Path(os.path.expanduser(tokenizer)).is_dir():
        raise ConfigError("model.tokenizer", f"tokenizer directory not found: {tokenizer}")


def _validate_method_strategy(cfg, device_type: str) -> None:
    method, strategy = cfg.method.name, cfg.strategy.name
    if method not in METHOD_SCHEMAS:
        raise ConfigError("method", f"unknown method {method!r}; choose one of {', '.join(METHOD_SCHEMAS)}")
    fitting = strategies_for(method)
    if strategy not in fitting:
        raise ConfigError("strategy", f"method={method} does not run on strategy={strategy}; "
                                      f"strategies that fit {method}: {', '.join(fitting)}")
    kind = STRATEGIES[strategy].kind
    if kind == "deepspeed":
        if cfg.strategy.stage not in (1, 2, 3):
            raise ConfigError("strategy.stage", f"ZeRO stage must be 1, 2 or 3, got {cfg.strategy.stage}")
        if cfg.strategy.offload_param and cfg.strategy.stage != 3:
            raise ConfigError("strategy.offload_param", "parameter offload needs ZeRO stage 3")
    if cfg.train.skip_nonfinite_steps and (kind == "deepspeed" or cfg.train.precision == "fp16"):
        # Either would leave the setting unused: DeepSpeed's engine steps the optimizer where the loop cannot
        # skip it, and fp16's loss scaler already skips the steps whose gradients overflow.
        raise ConfigError("train.skip_nonfinite_steps", "skipping non-finite steps works with DDP and FSDP in "
                                                        "bf16 or fp32, not with DeepSpeed or fp16; set it to 0")
    if cfg.train.async_checkpoint and kind == "deepspeed":
        # DeepSpeed's engine writes its checkpoints itself, synchronously; its asynchronous writer (Nebula) is a
        # separate Azure service. Refused rather than ignored.
        raise ConfigError("train.async_checkpoint", f"strategy={strategy} (DeepSpeed) saves synchronously only; "
                                                    "set train.async_checkpoint=false, or use ddp or fsdp")
    if kind == "fsdp" and cfg.strategy.reduce_dtype not in ("fp32", "bf16"):
        raise ConfigError("strategy.reduce_dtype", f"expected fp32 or bf16, got {cfg.strategy.reduce_dtype!r}")
    if method == "qlora":
        q = cfg.method
        if q.bits not in (4, 8):
            raise ConfigError("method.bits", f"expected 4 (NF4/FP4) or 8 (LLM.int8), got {q.bits}")
        if q.quant_type not in ("nf4", "fp4"):
            raise ConfigError("method.quant_type", f"expected nf4 or fp4, got {q.quant_type!r}")
        for key in ("compute_dtype", "quant_storage_dtype"):
            if q[key] != "auto" and q[key] not in DTYPES:
                raise ConfigError(f"method.{key}", f"expected auto, {', '.join(DTYPES)}, got {q[key]!r}")
        if kind == "fsdp":
            _validate_sharded_quantized_base(q, cfg.train.precision, device_type)
        # bitsandbytes' CPU backend warns at import that an optional kernel package is absent.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        try:
            import bitsandbytes  # noqa: F401  (its CPU backend serves when there is no GPU)
        except ImportError as error:
            raise ConfigError("method", f"qlora needs bitsandbytes, which failed to import: {error}") from error
    if method != "full" and (cfg.method.rank < 1 or cfg.method.alpha <= 0):
        raise ConfigError("method.rank", "LoRA rank must be >= 1 and alpha > 0")


def _advise_one_gpu_zero(strategy, device_type: str, world_size: int) -> None:
    """ZeRO divides state among ranks: one GPU without offload gets only its per-parameter bookkeeping, which costs
    speed and memory (docs/benchmarks.md, one H100: on the 1B full fine-tune ZeRO-2 at 0.94x FSDP2's speed, ZeRO-3
    at 0.97x, both at about 28 GiB against 24.5)."""
    if (device_type == "cuda" and world_size == 1 and strategy_spec(strategy).kind == "deepspeed"
            and not strategy.offload_optimizer and not strategy.offload_param):
        logging.getLogger("shardtune").warning(
            "strategy=%s on one GPU: ZeRO divides the training state among ranks, and one rank has nothing to "
            "divide; strategy=ddp or fsdp trains the same faster (ZeRO on one GPU pays when it offloads to the host: "
            "strategy=zero3_offload)", strategy.name)


def _validate_sharded_quantized_base(q, precision: str, device_type: str) -> None:
    """FSDP2 shards QLoRA's packed 4-bit storage like any other weight (trainer/sharded_loading.py)."""
    if q.bits != 4:
        raise ConfigError("method.bits", "FSDP shards a 4-bit base only: LLM.int8's weights keep per-row state "
                                         "that sharding would split; use method.bits=4, or strategy=ddp for 8 bits")
    if q.use_dora:
        raise ConfigError("method.use_dora", "DoRA over a 4-bit base needs each whole weight on every rank, and "
                                             "strategy=fsdp shards it; use strategy=ddp, or method=lora")
    compute = precision if precision != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    if q.quant_storage_dtype not in ("auto", compute):
        # The mixed-precision policy casts every sharded parameter to the compute dtype for the all-gather;
        # a packed storage of another dtype would have its bits converted as if they were numbers.
        raise ConfigError("method.quant_storage_dtype", f"{q.quant_storage_dtype} under strategy=fsdp: the packed "
                                                        f"4-bit storage must be in the compute dtype ({compute}); "
                                                        f"use auto")


def _validate_train(train, device_type: str, world_size: int) -> None:
    if (train.max_steps is None) == (train.epochs is None):
        raise ConfigError("train.max_steps", "give exactly one of train.max_steps and train.epochs")
    if train.max_steps is not None and train.max_steps < 1:
        raise ConfigError("train.max_steps", f"must be >= 1, got {train.max_steps}")
    if train.epochs is not None and train.epochs <= 0:
        raise ConfigError("train.epochs", f"must be > 0, got {train.epochs}")
    micro_batch = train.micro_batch_size
    if micro_batch != AUTO and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1):
        raise ConfigError("train.micro_batch_size", f"must be >= 1 or auto, got {micro_batch!r}")
    for key in ("grad_accum", "seq_len", "log_interval"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key}", f"must be >= 1, got {getattr(train, key)}")
    if train.global_batch_size is not None and train.global_batch_size < 1:
        raise ConfigError("train.global_batch_size", f"must be >= 1 or null, got {train.global_batch_size}")
    # With auto, the global batch is checked where auto is resolved (micro_batch.py).
    derived = None if micro_batch == AUTO else micro_batch * train.grad_accum * world_size
    if train.global_batch_size is not None and derived is not None and train.global_batch_size != derived:
        # The usual cause: another number of ranks than before (a resume on another world size); say what keeps it.
        grad_accum, remainder = divmod(train.global_batch_size, micro_batch * world_size)
        keep = (f"; train.grad_accum={grad_accum} keeps it on {world_size} rank(s)" if grad_accum and not remainder
                else "")
        raise ConfigError("train.global_batch_size",
                          f"{train.global_batch_size} != micro_batch_size {train.micro_batch_size} x grad_accum "
                          f"{train.grad_accum} x world size {world_size} = {derived}{keep}")
    if train.precision not in PRECISIONS:
        raise ConfigError("train.precision", f"expected one of {', '.join(PRECISIONS)}, got {train.precision!r}")
    if device_type == "cpu" and train.precision == "fp16":
        raise ConfigError("train.precision", "fp16 needs a GPU; use bf16 or fp32 on CPU")
    if train.kernels not in KERNEL_CHOICES:
        raise ConfigError("train.kernels", f"expected one of {', '.join(KERNEL_CHOICES)}, got {train.kernels!r}")
    if train.lora_kernel not in LORA_KERNEL_CHOICES:
        raise ConfigError("train.lora_kernel",
                          f"expected one of {', '.join(LORA_KERNEL_CHOICES)}, got {train.lora_kernel!r}")
    if train.compile not in COMPILE_CHOICES:
        raise ConfigError("train.compile", f"expected one of {', '.join(COMPILE_CHOICES)}, got {train.compile!r}")
    if train.fp8 not in FP8_CHOICES:
        raise ConfigError("train.fp8", f"expected one of {', '.join(FP8_CHOICES)}, got {train.fp8!r}")
    _validate_checkpointing(train)
    steps = list(train.profile_steps)
    if steps and not (len(steps) == 2 and 1 <= steps[0] <= steps[1]):
        raise ConfigError("train.profile_steps", f"expected [first, last] with 1 <= first <= last, got {steps}")
    if train.grace_period_s < 0:
        raise ConfigError("train.grace_period_s", f"must be >= 0 seconds, got {train.grace_period_s}")
    if train.skip_nonfinite_steps < 0:
        raise ConfigError("train.skip_nonfinite_steps", f"must be >= 0, got {train.skip_nonfinite_steps}")


def _validate_checkpointing(train) -> None:
    if train.activation_checkpointing_every < 1:
        raise ConfigError("train.activation_checkpointing_every", f"must be >= 1, got {train.activation_checkpointing_every}")
    if train.activation_checkpointing_policy not in CHECKPOINT_POLICIES:
        raise ConfigError("train.activation_checkpointing_policy",
                          f"expected one of {', '.join(CHECKPOINT_POLICIES)}, got {train.activation_checkpointing_policy!r}")
    if not train.activation_checkpointing:  # the settings below refine checkpointing: alone they would do nothing
        changed = [key for key, default in (("activation_checkpointing_every", 1),
                                            ("activation_checkpointing_policy", "layer"), ("activation_offload", False))
                   if getattr(train, key) != default]
        if changed:
            raise ConfigError(f"train.{changed[0]}", "only applies with train.activation_checkpointing=true")


def _validate_micro_batch_trial(cfg, device_type: str) -> None:
    """train.micro_batch_trial runs where the trial can tell (trainer/micro_batch_trial.py); elsewhere it says so."""
    if not cfg.train.micro_batch_trial:
        return
    warn = logging.getLogger("shardtune").warning
    if device_type == "cpu":
        warn("train.micro_batch_trial is ignored: CPU workers have no GPU memory to try")
    elif strategy_spec(cfg.strategy).kind not in TRIAL_STRATEGY_KINDS:
        warn("train.micro_batch_trial is ignored under strategy=%s: DeepSpeed's engine fixes the micro batch and the "
             "accumulation when it starts; the micro batch stays %s", cfg.strategy.name, cfg.train.micro_batch_size)


def _validate_optim(optim) -> None:
    if optim.name != "adamw":
        raise ConfigError("optim.name", f"unknown optimizer {optim.name!r}; available: adamw")
    if optim.scheduler not in SCHEDULERS:
        raise ConfigError("optim.scheduler", f"expected one of {', '.join(SCHEDULERS)}, got {optim.scheduler!r}")
    if optim.lr <= 0:
        raise ConfigError("optim.lr", f"must be > 0, got {optim.lr}")
