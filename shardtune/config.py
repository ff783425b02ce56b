"""The typed config schema: one dataclass per config group, registered in Hydra's ConfigStore.

The dataclasses are the schema and the documentation. YAML files under conf/ only choose a group
option and override fields. OmegaConf refuses unknown keys and wrong types against these classes;
`validate` (launcher/validation.py) adds the rules that span several fields.
"""
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .strategy_registry import SCHEMAS, STRATEGIES


def asset_path(name: str) -> str:
    """Absolute path of a file or folder shipped in shardtune/assets (used as ${asset:name} in YAML)."""
    return str(resources.files("shardtune") / "assets" / name)


if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", asset_path)


def launcher_log_name(node_rank) -> str:
    """Hydra's log file of the launcher: launcher.log, launcher-node<R>.log on the other nodes of a multi-node
    run (in an srun step, Slurm's node id), so that nodes sharing the run directory never write one file
    together."""
    node_rank = int(node_rank) or (int(os.environ.get("SLURM_NODEID", 0)) if "SLURM_STEP_ID" in os.environ else 0)
    return "launcher" if node_rank == 0 else f"launcher-node{node_rank}"


if not OmegaConf.has_resolver("launcher_log_name"):
    OmegaConf.register_new_resolver("launcher_log_name", launcher_log_name)


def model_name(name_or_path) -> str:
    """A model's short name from its path or hub id: the last part (`/models/llama-3.2-1b/` -> llama-3.2-1b,
    `Qwen/Qwen2.5-0.5B` -> Qwen2.5-0.5B); model=pretrained's default for model.name (${model_name:...} in YAML)."""
    if not name_or_path:
        return "pretrained"  # no model given: validation names model.name_or_path
    return os.path.basename(os.path.abspath(os.path.expanduser(str(name_or_path)))) or "pretrained"  # "." too


if not OmegaConf.has_resolver("model_name"):
    OmegaConf.register_new_resolver("model_name", model_name)


def weights_origin(model_cfg) -> str:
    """Where a run's starting weights come from, in words for the launcher's log, the workers' log and the summary."""
    return model_cfg.name_or_path if model_cfg.init == "pretrained" else "random weights from model.architecture"


@dataclass
class ModelConfig:
    name: str = MISSING
    """Short name used in run names and logs."""
    name_or_path: Optional[str] = None
    """Hub id or local directory of a pretrained model: its weights, its config and (unless `tokenizer` is set) its
    tokenizer. With init=random only the tokenizer's source, and refused when `tokenizer` is set too. Setting it on
    the command line without a model= group picks model=pretrained."""
    tokenizer: Optional[str] = None
    """Tokenizer hub id or directory; null = name_or_path's own. Its ids must fit the model's embedding rows."""
    init: str = "pretrained"
    """pretrained: load weights and config from name_or_path. random: build from `architecture` (tests, benchmarks)."""
    architecture: Dict[str, Any] = field(default_factory=dict)
    """transformers config fields (model_type, hidden_size, ...). Builds the model for init=random. For
    init=pretrained the model's own config wins (the launcher warns about fields that differ from it); here it
    only lets `shardtune plan` size a hub model without downloading its config."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of name_or_path."""
    attn_implementation: str = "auto"
    """Attention kernel passed to transformers: sdpa, eager, flash_attention_2, flex_attention, ...; auto: sdpa
    (torch picks cuDNN's or flash's kernel on Hopper), and for packed rows (data.packing) flash_attention_2 where
    the flash-attn package is installed on a GPU: its variable-length kernel skips the attention across examples
    that sdpa computes and masks (the plan and the log say which, and why)."""
    trust_remote_code: bool = False


@dataclass
class FullMethodConfig:
    """Full fine-tuning: every weight is trained."""
    name: str = "full"


@dataclass
class LoraMethodConfig:
    """LoRA adapters (peft) over a frozen base model."""
    name: str = "lora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt, or ["all-linear"] for every linear layer but the output head."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""


@dataclass
class QLoraMethodConfig(LoraMethodConfig):
    """LoRA over a quantized frozen base (bitsandbytes): 4-bit NF4/FP4, or LLM.int8 with bits=8."""
    name: str = "qlora"
    bits: int = 4
    """4 (NF4/FP4) or 8 (LLM.int8)."""
    quant_type: str = "nf4"
    """nf4 or fp4 (4-bit only)."""
    double_quant: bool = True
    """Quantize the quantization constants too (4-bit only): saves about 0.4 bits per weight."""
    compute_dtype: str = "auto"
    """Dtype the 4-bit weights are dequantized to for matmuls; auto = the training precision."""
    quant_storage_dtype: str = "auto"
    """Dtype the packed 4-bit weights are stored in (bf16, fp16 or fp32); auto = the compute dtype."""


@dataclass
class ColumnsConfig:
    """A dataset's own names for the fields a format reads; null = the name given here in brackets. Set as a whole
    (data.columns={messages: conversations, role: from, content: value}) or key by key (data.columns.role=from)."""
    instruction: Optional[str] = None
    """alpaca: the instruction [instruction]."""
    input: Optional[str] = None
    """alpaca: the optional input [input]."""
    output: Optional[str] = None
    """alpaca: the response [output]."""
    history: Optional[str] = None
    """alpaca: earlier turns, a list of [instruction, response] pairs [history]."""
    system: Optional[str] = None
    """alpaca and chat: the row's system prompt [system]."""
    messages: Optional[str] = None
    """chat: the list of turns [messages]; ShareGPT calls it conversations."""
    role: Optional[str] = None
    """chat: a turn's role [role]; ShareGPT: from (human, gpt, system, function_call, observation)."""
    content: Optional[str] = None
    """chat: a turn's text [content]; ShareGPT: value."""
    tool_calls: Optional[str] = None
    """chat: an assistant turn's tool calls, OpenAI style [tool_calls]."""
    tools: Optional[str] = None
    """chat: the tools offered, a list or a JSON string, passed to the chat template [tools]."""
    train: Optional[str] = None
    """chat: a turn's own train flag, true/false, overriding data.train_on_roles [train]; segments: a segment's
    [label]."""
    text: Optional[str] = None
    """completion: the text [text]; segments: a segment's text [text]."""
    segments: Optional[str] = None
    """segments: the list of {text, label} pieces [segments]."""


@dataclass
class DataSourceConfig:
    """One dataset: a local file, a directory of files, or a hub dataset name."""
    path: str = MISSING
    """A .jsonl/.json/.parquet/.csv file, a directory of them (files named train*/validation*/test* are
    the dataset's own splits), or a hub dataset name."""
    format: Optional[str] = None
    """alpaca, chat, completion or segments; null = data.format."""
    columns: Optional[ColumnsConfig] = None
    """The source's own field names, e.g. {instruction: question, output: answer} or {messages: conversations};
    null = data.columns."""
    subset: Optional[str] = None
    """Hub dataset configuration name."""
    split: Optional[str] = None
    """Split to read, e.g. train or train[:10%]; null = all of the dataset's splits (train/validation/test)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit)."""
    weight: float = 1.0
    """How often each training row of this source is used: 2.0 repeats every row, 0.5 samples half of them."""


@dataclass
class DataConfig:
    name: str = MISSING
    format: str = "alpaca"
    """alpaca (instruction / input / output, optional system and history), chat (a `messages` list of
    role/content, OpenAI or ShareGPT style, optional system and tools), completion (plain `text`), segments
    (template-free `segments` of {text, label}), or random_tokens (`num_rows` random sequences of train.seq_len,
    for benchmarks)."""
    path: Optional[str] = None
    """The dataset (see DataSourceConfig.path). Give this or `mix`."""
    subset: Optional[str] = None
    split: Optional[str] = None
    revision: Optional[str] = None
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    """The dataset's own names for the format's fields (see ColumnsConfig)."""
    mix: List[DataSourceConfig] = field(default_factory=list)
    """Several datasets mixed with weights, instead of `path`."""
    num_rows: int = 0
    """Rows to generate (random_tokens only)."""
    val_fraction: float = 0.1
    """Share of rows held out for validation when the dataset has no validation split of its own."""
    test_fraction: float = 0.0
    """Share of rows held out for testing (`shardtune eval`) when the dataset has no test split of its own."""
    use_dataset_splits: bool = True
    """Use the dataset's own validation/test splits where it has them; false carves them from its rows."""
    mask_prompt: bool = True
    """Train only on responses: prompt, system and user tokens get label -100. false trains on every token (and
    the settings below are ignored)."""
    train_on_roles: List[str] = field(default_factory=lambda: ["assistant"])
    """The roles whose turns are trained: system, user, assistant, tool (alpaca: its system prompt, prompts and
    outputs). A turn's own train flag (data.columns.train) overrides this."""
    train_on_eos: str = "turn"
    """The end of a trained turn (EOS, or the chat template's end-of-turn): turn = after every trained turn,
    last = only after the last one, none = never."""
    mask_history: Optional[bool] = None
    """Train only the last exchange (the last assistant turn, and the prompt before it where its role trains); the
    earlier turns are context. null = the format's default: true for alpaca `history`, false for chat (every
    assistant turn of a conversation is a reply worth learning)."""
    system_prompt: Optional[str] = None
    """System prompt for alpaca and chat rows that have none of their own; null = none."""
    on_bad_row: str = "error"
    """A malformed row (a bad conversation, a missing field, a turn order or chat template the row breaks):
    error = stop naming its file and line; skip = leave it out, count it in the data summary and log the first few."""
    chat_template: Optional[str] = None
    """Jinja chat template for format=chat; null = the tokenizer's, else a simple built-in one."""
    drop_duplicates: bool = True
    """Drop exact repeats of an earlier row (they would leak between the splits)."""
    too_long: str = "truncate"
    """Rows longer than train.seq_len: truncate (keep the start), keep_response (shorten the prompt from its oldest
    tokens, BOS kept, so the response stays; then cut the response's end), drop, or split (format=completion: a
    long text becomes consecutive train.seq_len chunks, all trained; with packing the texts are concatenated and
    chunked)."""
    packing: bool = False
    """Pack several examples into each training sequence of train.seq_len; attention stays within each
    example (position ids restart per example)."""
    cache_dir: Optional[str] = None
    """Where tokenized data is cached; null = $SHARDTUNE_DATA_CACHE or ~/.cache/shardtune/data. Use a shared
    filesystem on clusters."""
    cache_entry: Optional[str] = None
    """Set by the launcher, not by users: the cache entry it tokenized for this run, which the workers load without
    computing its key again."""
    num_proc: int = 1
    """Processes for tokenization."""


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    fused: Optional[bool] = None
    """Fused AdamW kernel; null = use it where the device supports it."""
    scheduler: str = "cosine"
    """cosine, linear or constant, each after a linear warmup."""
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    """Floor of the decayed learning rate, as a fraction of lr."""


AUTO = "auto"  # train.micro_batch_size=auto (launcher/micro_batch.py)


@dataclass
class TrainConfig:
    max_steps: Optional[int] = None
    """Optimizer steps to run. Give this or epochs."""
    epochs: Optional[float] = None
    """Passes over the training split. Give this or max_steps."""
    micro_batch_size: Any = 2
    """Sequences per device per forward pass: a number >= 1, or auto. auto: the launcher picks the largest power of two
    up to 128 whose estimated peak (the estimate `shardtune plan` prints) fits the GPU, lowered where the train split
    has fewer rows per rank, and turns on micro_batch_trial; with global_batch_size set, the largest divisor of its
    share per rank, grad_accum making up the rest. CPU workers have no GPU memory to fill: auto takes at most 8 there
    (larger batches gain a CPU little), within host RAM. (Typed Any because OmegaConf has no int-or-string type;
    validation.py refuses anything else.)"""
    micro_batch_trial: bool = False
    """Confirm micro_batch_size by a trial forward and backward on the GPU before training: if any rank runs out of
    memory, halve the micro batch and double grad_accum (the global batch and each step's rows stay), and try again.
    micro_batch_size=auto turns it on. DDP and FSDP only; ignored with a warning on CPU workers and under DeepSpeed."""
    grad_accum: int = 1
    """Micro-batches accumulated before each optimizer step."""
    global_batch_size: Optional[int] = None
    """Optional: must equal micro_batch_size * grad_accum * world size (with micro_batch_size=auto, sets grad_accum)."""
    seq_len: int = 512
    """Longest sequence; longer examples are handled by data.too_long."""
    precision: str = "auto"
    """bf16, fp16 or fp32; auto = bf16 on GPU, fp32 on CPU."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    activation_checkpointing: bool = False
    """Recompute decoder layers' activations in backward instead of keeping them from the forward: much less memory
    for about a third more compute."""
    activation_checkpointing_every: int = 1
    """Checkpoint every k-th decoder layer only (1 = all); the others keep their activations: faster, more memory."""
    activation_checkpointing_policy: str = "layer"
    """What a checkpointed layer keeps. layer: its input (the whole layer is recomputed; in compiled blocks also
    the matmul outputs under 1/16 of their input: LoRA's x·Aᵀ); ops: also its matmul
    and attention outputs (torchtitan's per-op selective checkpointing), so backward recomputes only the pointwise
    ops (norms, RoPE, SwiGLU): faster, more memory."""
    activation_offload: bool = False
    """With activation_checkpointing: what the checkpointed layers keep waits for backward in pinned host memory,
    not on the GPU (a copy each way per layer and step; slower, frees layers*b*s*h*2 bytes)."""
    kernels: str = "auto"
    """Fused GPU kernels. liger: Liger-Kernel's RMSNorm, RoPE, SwiGLU and fused linear cross-entropy (the logits of
    a whole sequence are never materialised, in training or evaluation); none: transformers' own modules; auto:
    liger on CUDA for the architectures it is used with here (llama, mistral, qwen2, qwen3) when liger-kernel is
    installed, none elsewhere (the log says why once)."""
    lora_kernel: str = "auto"
    """LoRA layers' matmuls. fused: each plain LoRA layer (one adapter over an nn.Linear, no DoRA) is one operator
    whose base matmul adds onto the adapters' product in its epilogue, and its input gradient likewise, instead of
    peft's separate add (shardtune/trainer/fused_lora.py); peft: peft's forward; auto: fused on CUDA for method=lora,
    peft elsewhere (QLoRA's 4-bit layers and DoRA keep peft's forward; the log says why once)."""
    compile: str = "auto"
    """torch.compile. blocks: each decoder layer compiled on its own (as torchtitan does; compile errors are raised,
    never a silent fall-back to eager); none: eager; auto: blocks on CUDA for Llama-like models (llama, mistral,
    qwen2, qwen3), every method, checkpointed or not, where compiled blocks were measured fast with the loss curve
    kept; none elsewhere (the log says why)."""
    profile_steps: List[int] = field(default_factory=list)
    """[first, last]: record these optimizer steps with torch.profiler; each rank writes a Chrome trace and a table
    of its costliest operators into <output_dir>/profile/. Empty = no profiling."""
    fp8: str = "auto"
    """Float8 matmuls for full fine-tuning (torchao.float8), on the decoder layers' linear layers large enough to
    gain. tensorwise: fastest, FSDP2 all-gathers the weights in float8; rowwise: finer scales, closer to bf16; none;
    auto: none for now (on once its loss curve is shown within 1% of bf16). Needs a GPU with float8 tensor cores
    (H100, H200, L40S), DDP or FSDP, and torchao; best with train.compile=blocks."""
    seed: int = 42
    log_interval: int = 1
    eval_interval: int = 0
    """Evaluate every N steps (0 = only at the end)."""
    eval_max_batches: Optional[int] = None
    """Cap on validation micro-batches per evaluation; null = the whole split."""
    save_interval: int = 0
    """Save a resumable checkpoint every N steps (0 = none until the end)."""
    keep_checkpoints: int = 2
    """How many periodic checkpoints to keep, oldest deleted first, and only once a newer one is complete; 0 keeps
    all."""
    async_checkpoint: bool = False
    """Write checkpoints in a background thread (torch.distributed.checkpoint.async_save) while training goes on:
    the step only waits for the state to be copied to host memory. A save waits for the one before it, the
    checkpoint counts as complete (COMPLETE marker) once every rank has written it, and the end of the run waits for
    it. DDP and FSDP only: DeepSpeed writes its own checkpoints."""
    save_final: bool = True
    """Write final/ (adapter or model) at the end; throughput benchmarks turn it off."""
    grace_period_s: float = 25.0
    """After SIGTERM (Slurm preemption, Kubernetes, `kill`), how long the workers have to finish the step and
    save a complete checkpoint before they exit without one. Keep it below what the scheduler waits between
    SIGTERM and SIGKILL (Slurm's KillWait or the partition's GraceTime, Kubernetes'
    terminationGracePeriodSeconds: 30 s by default)."""
    skip_nonfinite_steps: int = 0
    """Steps with a NaN or infinite gradient norm (any rank's loss NaN or inf makes it so) that are skipped (no
    optimizer update, gradients dropped, every rank alike) before the run stops; 0 stops at the first.
    DDP and FSDP only; not with fp16, where the loss scaler skips overflowing steps itself."""


@dataclass
class LoggerConfig:
    name: str = "none"
    """none or wandb."""
    project: str = "shardtune"
    entity: Optional[str] = None
    run_name: Optional[str] = None
    mode: Optional[str] = None
    """online, offline or disabled; null = WANDB_MODE from the environment, else online."""
    tags: List[str] = field(default_factory=list)
    group: Optional[str] = None
    """W&B group; the trials of a sweep are grouped under the sweep's name."""


@dataclass
class LauncherConfig:
    nproc_per_node: Optional[int] = None
    """Workers on this node; null = the visible GPUs, or cpu_workers when there is no GPU."""
    cpu_workers: int = 2
    """Workers (gloo) when there is no GPU."""
    device: str = "auto"
    """auto, cuda or cpu."""
    nnodes: int = 1
    """Nodes in the run (the most that may join, with min_nodes)."""
    min_nodes: Optional[int] = None
    """Elastic runs (c10d rendezvous only): start once this many nodes have joined; null = nnodes."""
    node_rank: int = 0
    """This node's rank. Static rendezvous: its place in the run. c10d: node 0 hosts the rendezvous store;
    torchrun assigns the ranks."""
    rdzv_endpoint: Optional[str] = None
    """host:port of torchrun's c10d rendezvous (port default 29400), the same on every node; set it to use
    c10d. null = static rendezvous on master_addr:master_port."""
    rdzv_id: Optional[str] = None
    """Id that every node of one run shares (c10d); null = derived from output_dir (the Slurm job id on Slurm)."""
    rdzv_timeout_s: int = 600
    """How long torchrun waits for all nodes to join the rendezvous before giving up (c10d)."""
    max_restarts: int = 0
    """Times torchrun restarts the whole worker group after a worker fails."""
    collective_timeout_s: float = 300.0
    """Once the first training step is done, a collective (all-reduce, barrier) that waits longer than this for a
    rank fails the run, naming the step and the ranks that stopped answering, instead of hanging (NCCL would wait 10
    minutes, gloo 30). A rank that stops answering (a frozen node, SIGSTOP, a deadlock) is then killed by torchrun's
    agent, which restarts the workers if launcher.max_restarts allows. Keep it above the longest step, evaluation
    and pruning report."""
    setup_timeout_s: float = 1800.0
    """The collective timeout while one rank may work alone for long: set-up (loading, tokenizing, compiling), the
    first step, saving checkpoints and exporting final/."""
    master_addr: str = "127.0.0.1"
    """Static rendezvous: address of node 0."""
    master_port: int = 0
    """Static rendezvous port; 0 picks a free one (single node), or 29500 on several nodes. Also the c10d port
    in an srun step, where the endpoint is the step's first node."""
    socket_ifname: Optional[str] = None
    """Network interface(s) for NCCL and gloo traffic (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME), e.g. eth0 or
    ib0; null = the libraries choose (they may pick one the other nodes cannot reach)."""
    local_addr: Optional[str] = None
    """The address other nodes reach this node at (torchrun --local-addr); null = torchrun's choice (the
    host name). Set it where host names do not resolve."""
    rdzv_check_timeout_s: float = 60.0
    """Multi-node: before starting torchrun, wait at most this long for the rendezvous endpoint to accept a
    TCP connection, and stop with a clear error if it does not (instead of hanging); 0 skips the check."""
    memory_check: bool = True
    """Before any worker starts, `shardtune train` estimates the run's memory (the estimate `shardtune plan` prints)
    and refuses a run whose peak per GPU exceeds the GPU's memory by more than 10%, or whose host RAM per node
    exceeds the node's, naming what would fit instead. false starts such a run anyway, with a warning (for a setup
    where the estimate is known to be pessimistic). CPU workers are checked against host RAM only."""
    gpu_memory_gib: Optional[float] = None
    """Memory of each GPU of the run, in GiB, for the memory check and `plan`'s verdict; null = GPU 0 of this
    machine. Set it where the run's GPUs are not this machine's: cluster=slurm (submitted from a login node, the
    check is skipped without it), or `plan` for GPUs you don't have (e.g. 80 for an 80 GB card)."""
    host_memory_gib: Optional[float] = None
    """RAM of each node, in GiB, for the memory check and `plan`'s verdict; null = this machine's RAM, where the run's
    workers are this machine's (with cluster=slurm, or `plan` for GPUs this machine lacks, the host check is skipped
    without it). Also for machines whose reported RAM is not what a job may use."""


@dataclass
class ClusterConfig:
    name: str = "local"
    """local (torchrun on this machine; several nodes by hand) or slurm (sbatch, one srun task per node)."""
    nodes: int = 1
    """slurm: nodes to allocate (sets launcher.nnodes)."""
    gpus_per_node: int = 0
    """slurm: GPUs per node, one worker each; 0 = CPU workers (launcher.nproc_per_node or cpu_workers)."""
    cpus_per_task: Optional[int] = None
    """slurm: CPUs for each node's task (torchrun and its workers); null = Slurm's default."""
    partition: Optional[str] = None
    """slurm: partition; null = the cluster's default."""
    time: Optional[str] = None
    """slurm: time limit, e.g. 04:00:00; null = the partition's."""
    account: Optional[str] = None
    qos: Optional[str] = None
    job_name: Optional[str] = None
    """slurm: null = the run directory's name."""
    signal_before_limit_s: int = 300
    """slurm: seconds before the time limit at which Slurm sends SIGUSR1; workers then save a checkpoint, and
    the job requeues itself and resumes from it. Leave room for one step and a checkpoint."""
    requeue: bool = True
    """slurm: requeue the job after a preemption checkpoint."""
    rdzv_port: int = 0
    """slurm: port of the c10d rendezvous on the first node; 0 = a free one, picked there when the job starts (jobs
    that share a node, such as a sweep's trials, never collide)."""
    sbatch_options: List[str] = field(default_factory=list)
    """slurm: extra #SBATCH options, e.g. ["--exclusive", "--mem=0"]."""
    setup: List[str] = field(default_factory=list)
    """slurm: shell lines run on each node before torchrun, e.g. ["module load cuda/12.4", "source venv/bin/activate"]."""


@dataclass
class SweepConfig:
    """Hyperparameter sweeps (`shardtune train -m ...`): every trial is a whole run in <sweep_dir>/trial-N."""
    objective: str = "val_loss"
    """What each trial reports to the sweeper: val_loss (the final validation loss), train_loss, tokens_per_second,
    or eval/<metric> (shardtune eval on the validation split after training: eval/exact_match, eval/rouge_l,
    eval/loss, eval/perplexity). Losses are minimized, the others maximized; a failed trial counts as the worst."""
    parallel_trials: Optional[int] = None
    """Trials in flight at once. null = local: as many as the node's GPUs hold side by side (8 GPUs and
    launcher.nproc_per_node=2: 4), one at a time on CPU; cluster=slurm: every trial's job at once (max 64)."""
    pruner: str = "none"
    """Stop hopeless trials early (hydra/sweeper=optuna, objective val_loss): none, median, successive_halving
    or hyperband, on the validation loss of every train.eval_interval."""
    pruner_startup_trials: int = 2
    """median: trials that run to the end before any is pruned."""
    pruner_warmup_steps: int = 0
    """median: steps of each trial before it may be pruned."""
    retry_failed: bool = False
    """Re-running a sweep skips the trials that finished; true also runs the failed ones again."""
    poll_interval_s: float = 10.0
    """cluster=slurm: how often a trial checks whether its job has ended."""
    # Set by the sweeper for each trial's workers (Optuna pruning), not by users:
    optuna_storage: Optional[str] = None
    optuna_study: Optional[str] = None
    optuna_trial: Optional[int] = None


@dataclass
class Config:
    model: ModelConfig = MISSING
    method: Any = MISSING
    strategy: Any = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = MISSING
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    cluster: ClusterConfig = MISSING
    output_dir: str = MISSING
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    resume: str = "none"
    """none, auto (newest complete checkpoint in output_dir), or a checkpoint directory."""
    sweep: SweepConfig = field(default_factory=SweepConfig)


METHOD_SCHEMAS = {"full": FullMethodConfig, "lora": LoraMethodConfig, "qlora": QLoraMethodConfig}


def register_configs() -> None:
    """Store the schema in Hydra's ConfigStore (the YAML groups extend these nodes). Hydra's sweep plugins register
    their own configs when Hydra scans them (hydra_plugins/shardtune_sweeps)."""
    cs = ConfigStore.instance()
    cs.store(name="shardtune_schema", node=Config)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/data", name="data", node=DataConfig)
    cs.store(group="schema/optim", name="optim", node=OptimConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    cs.store(group="schema/cluster", name="cluster", node=ClusterConfig)
    for name, schema in METHOD_SCHEMAS.items():
        cs.store(group="schema/method", name=name, node=schema)
    for kind, schema in SCHEMAS.items():
        cs.store(group="schema/strategy", name=kind, node=schema)


def typed_config(cfg) -> DictConfig:
    """`cfg` (a composed config, or a run's config.yaml) merged into the typed schema: the method and the strategy
    into the schema their name selects (left untyped where the name is unknown, for validation to name). Raises
    OmegaConf's errors, whose full_key names the key, for keys the schema lacks and values of the wrong type."""
    # A plain copy: merging the composed node itself would carry keys that Hydra's `+key=value` appended along.
    plain = OmegaConf.to_container(cfg, resolve=False)
    typed = OmegaConf.structured(Config)
    if plain["method"]["name"] in METHOD_SCHEMAS:
        typed.method = OmegaConf.structured(METHOD_SCHEMAS[plain["method"]["name"]])
    if plain["strategy"]["name"] in STRATEGIES:
        typed.strategy = OmegaConf.structured(STRATEGIES[plain["strategy"]["name"]].schema)
    return OmegaConf.merge(typed, plain)


def load_resolved(path) -> DictConfig:
    """Read a run's resolved config.yaml back into typed OmegaConf nodes (what workers do)."""
    return typed_config(OmegaConf.load(path))
