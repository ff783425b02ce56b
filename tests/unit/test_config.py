"""Unit tests of the config schema (shardtune/config.py), the YAML groups (shardtune/conf/) and the
cross-field rules (shardtune/launcher/validation.py).

Configs are composed in-process with Hydra's compose API, once per distinct override list; the rule tests
then set field values on the typed nodes (which check types as Hydra's overrides do), since a compose
costs about 0.1 s. The command line is exercised through `run_shardtune` where the user-facing message is
what is tested. No worker starts: every `shardtune train` here is refused before torchrun, or is `--cfg job`.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import pytest
from conftest import compose_cfg, run_shardtune
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from shardtune.config import (
    DataConfig,
    FullMethodConfig,
    LoggerConfig,
    LoraMethodConfig,
    ModelConfig,
    QLoraMethodConfig,
    TrainConfig,
    asset_path,
)
from shardtune.errors import ConfigError
from shardtune.launcher.validation import validate
from shardtune.strategy_registry import STRATEGIES as REGISTRY
from shardtune.strategy_registry import (ADAMW, CPU_ADAMW, DDPStrategyConfig, DeepSpeedStrategyConfig,
                                         FSDPStrategyConfig, Sharding)

STRATEGIES = ("ddp", "fsdp", "zero1", "zero2", "zero3", "zero3_offload")



def config_error(cfg, device_type: str = "cpu", world_size: int = 2) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate(cfg, device_type, world_size)
    return info.value


# --------------------------------------------------------------------------- composing every group option


def test_the_defaults_compose_to_tiny_lora_ddp_on_the_bundled_data():
    cfg = compose_cfg()
    assert (cfg.model.name, cfg.method.name, cfg.strategy.name) == ("tiny", "lora", "ddp")
    groups = (cfg.data.name, cfg.optim.name, cfg.logger.name, cfg.cluster.name)
    assert groups == ("tiny_instruct", "adamw", "none", "local")
    assert cfg.train.max_steps == 40 and cfg.train.epochs is None and cfg.train.seq_len == 256
    assert cfg.resume == "none"
    assert cfg.output_dir.startswith("runs/tiny-lora-ddp-")
    assert "${" not in cfg.output_dir
    validate(cfg, "cpu", 2)  # the defaults are a valid run


MODEL_PRESETS = {
    # name: (name_or_path, init, model_type, hidden_size, num_hidden_layers, vocab_size)
    "tiny": (None, "random", "llama", 128, 4, 320),
    "llama3.2-1b": ("meta-llama/Llama-3.2-1B", "pretrained", "llama", 2048, 16, 128256),
    "llama3.1-8b": ("meta-llama/Llama-3.1-8B", "pretrained", "llama", 4096, 32, 128256),
    "mistral-7b": ("mistralai/Mistral-7B-v0.3", "pretrained", "mistral", 4096, 32, 32768),
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B", "pretrained", "qwen2", 896, 24, 151936),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", "pretrained", "qwen2", 3584, 28, 152064),
}


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_every_model_preset_composes_with_typed_fields_and_validates(preset):
    cfg = compose_cfg(f"model={preset}")
    name_or_path, init, model_type, hidden_size, num_layers, vocab_size = MODEL_PRESETS[preset]
    assert OmegaConf.get_type(cfg.model) is ModelConfig
    assert cfg.model.name == preset
    assert cfg.model.name_or_path == name_or_path
    assert cfg.model.init == init
    architecture = cfg.model.architecture
    assert architecture.model_type == model_type
    assert architecture.hidden_size == hidden_size and isinstance(architecture.hidden_size, int)
    assert architecture.num_hidden_layers == num_layers
    assert architecture.vocab_size == vocab_size
    assert cfg.model.attn_implementation == "auto" and cfg.model.trust_remote_code is False
    validate(cfg, "cpu", 2)


def test_tiny_model_tokenizer_resolves_to_the_bundled_directory():
    cfg = compose_cfg("model=tiny")
    assert cfg.model.tokenizer == asset_path("tiny-tokenizer")


def test_method_full_has_no_adapter_fields():
    method = compose_cfg("method=full").method
    assert OmegaConf.get_type(method) is FullMethodConfig
    assert method.name == "full"
    assert "rank" not in method and "bits" not in method


def test_method_lora_composes_typed_adapter_fields():
    method = compose_cfg("method=lora").method
    assert OmegaConf.get_type(method) is LoraMethodConfig
    assert method.name == "lora"
    assert method.rank == 16 and isinstance(method.rank, int)
    assert method.alpha == 32.0 and isinstance(method.alpha, float)
    assert list(method.target_modules) == ["all-linear"]
    assert method.use_dora is False
    assert "bits" not in method


def test_method_qlora_composes_quantization_fields_on_top_of_lora():
    method = compose_cfg("method=qlora").method
    assert OmegaConf.get_type(method) is QLoraMethodConfig
    assert method.name == "qlora"
    assert (method.bits, method.quant_type, method.double_quant) == (4, "nf4", True)
    assert method.rank == 16 and method.alpha == 32.0
    assert compose_cfg("method=qlora", "method.bits=8").method.bits == 8


def test_method_overrides_are_converted_to_the_schema_types():
    method = compose_cfg("method=lora", "method.rank=8", "method.alpha=16", "method.use_dora=true").method
    assert method.rank == 8 and isinstance(method.rank, int)
    assert method.alpha == 16.0 and isinstance(method.alpha, float)
    assert method.use_dora is True


STRATEGY_PRESETS = {
    # name: (schema, stage, offload_optimizer, offload_param)
    "ddp": (DDPStrategyConfig, None, None, None),
    "fsdp": (FSDPStrategyConfig, None, None, None),
    "zero1": (DeepSpeedStrategyConfig, 1, False, False),
    "zero2": (DeepSpeedStrategyConfig, 2, False, False),
    "zero3": (DeepSpeedStrategyConfig, 3, False, False),
    "zero3_offload": (DeepSpeedStrategyConfig, 3, True, True),
}


@pytest.mark.parametrize("preset", STRATEGIES)
def test_every_strategy_composes_with_its_schema(preset):
    strategy = compose_cfg("method=full", f"strategy={preset}").strategy
    schema, stage, offload_optimizer, offload_param = STRATEGY_PRESETS[preset]
    assert OmegaConf.get_type(strategy) is schema
    assert strategy.name == preset
    if stage is None:
        assert "stage" not in strategy
    else:
        assert strategy.stage == stage and isinstance(strategy.stage, int)
        assert strategy.offload_optimizer is offload_optimizer
        assert strategy.offload_param is offload_param
        assert strategy.reduce_bucket_size == 50_000_000


def test_every_strategy_option_is_one_registry_entry_with_its_schema_sharding_and_optimizer():
    options = {path.stem for path in (resources.files("shardtune") / "conf" / "strategy").iterdir()
               if path.suffix == ".yaml"}
    assert options == set(STRATEGIES) == set(REGISTRY)
    for name in options:
        strategy = compose_cfg("method=full", f"strategy={name}").strategy
        entry = REGISTRY[name]
        assert OmegaConf.get_type(strategy) is entry.schema and entry.name == name
        assert "full" in entry.methods
    offload = compose_cfg("method=full", "strategy=zero3_offload").strategy
    assert REGISTRY["zero3_offload"].sharding(offload, 4) == Sharding(4, 4, 4, weights_offloaded=True,
                                                                     optimizer_offloaded=True)
    assert REGISTRY["zero3_offload"].optimizer(offload) == CPU_ADAMW
    assert REGISTRY["zero2"].sharding(compose_cfg("method=full", "strategy=zero2").strategy, 4) == Sharding(1, 4, 4)
    assert REGISTRY["fsdp"].optimizer(compose_cfg("strategy=fsdp", "strategy.cpu_offload=true").strategy) == ADAMW


def test_ddp_and_fsdp_fields():
    ddp = compose_cfg("strategy=ddp").strategy
    assert (ddp.bucket_cap_mb, ddp.static_graph) == (25, False)
    fsdp = compose_cfg("strategy=fsdp").strategy
    assert (fsdp.reshard_after_forward, fsdp.reduce_dtype, fsdp.cpu_offload) == (True, "fp32", False)


def test_data_tiny_instruct_points_at_the_bundled_jsonl():
    data = compose_cfg("data=tiny_instruct").data
    assert OmegaConf.get_type(data) is DataConfig
    assert (data.name, data.format, data.mask_prompt) == ("tiny_instruct", "alpaca", True)
    assert data.path == asset_path("data/tiny_instruct.jsonl")
    assert data.val_fraction == 0.1


def test_data_random_tokens_needs_no_file():
    cfg = compose_cfg("data=random_tokens")
    data = cfg.data
    assert (data.name, data.format, data.path) == ("random_tokens", "random_tokens", None)
    assert data.num_rows == 512 and data.val_fraction == 0.0
    validate(cfg, "cpu", 2)


@pytest.mark.parametrize("logger", ["none", "wandb"])
def test_every_logger_option_composes(logger):
    cfg = compose_cfg(f"logger={logger}")
    assert OmegaConf.get_type(cfg.logger) is LoggerConfig
    assert cfg.logger.name == logger
    assert cfg.logger.project == "shardtune" and list(cfg.logger.tags) == []
    validate(cfg, "cpu", 2)


def test_train_overrides_are_typed():
    train = compose_cfg("train.seq_len=128", "train.epochs=2", "train.max_steps=null").train
    assert OmegaConf.get_type(train) is TrainConfig
    assert train.seq_len == 128 and isinstance(train.seq_len, int)
    assert train.epochs == 2.0 and isinstance(train.epochs, float)
    assert train.max_steps is None


def test_composed_config_refuses_a_wrong_type_on_assignment():
    cfg = compose_cfg()
    with pytest.raises(ValidationError, match="seq_len"):
        cfg.train.seq_len = "abc"


# --------------------------------------------------------------------------- schema errors


@pytest.mark.parametrize("overrides, key", [
    (["method=full", "method.rank=8"], "method.rank"),
    (["method=lora", "method.bits=4"], "method.bits"),
    (["strategy=ddp", "strategy.stage=3"], "strategy.stage"),
    (["train.foo=1"], "train.foo"),
    (["train.seq_len=abc"], "train.seq_len"),
    (["launcher.nnodes=two"], "launcher.nnodes"),
])
def test_compose_refuses_unknown_keys_and_wrong_types(overrides, key):
    with pytest.raises(HydraException, match=key.replace(".", r"\.")):
        compose_cfg(*overrides)


def test_schema_check_accepts_appended_keys_inside_free_form_dicts():
    cfg = compose_cfg("method=full", "strategy=zero3",
                      "+strategy.extra.zero_optimization.stage3_max_live_parameters=1000",
                      "+model.architecture.rms_norm_eps=1e-6")
    validate(cfg, "cpu", 2)
    assert cfg.strategy.extra.zero_optimization.stage3_max_live_parameters == 1000


@pytest.mark.parametrize("overrides, key", [
    (["+train.foo=1"], "train.foo"),
    (["+method.bar=1"], "method.bar"),
    (["method=full", "strategy=zero2", "+strategy.baz=1"], "strategy.baz"),
    (["+surprise=1"], "surprise"),
])
def test_validate_refuses_keys_appended_with_plus(overrides, key):
    assert config_error(compose_cfg(*overrides)).key == key


# --------------------------------------------------------------------------- cross-field rules

FITTING = {"full": set(STRATEGIES), "lora": {"ddp", "fsdp"}, "qlora": {"ddp", "fsdp"}}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method", sorted(FITTING))
def test_method_strategy_pairs(method, strategy):
    cfg = compose_cfg(f"method={method}", f"strategy={strategy}")
    if strategy in FITTING[method]:
        validate(cfg, "cpu", 2)
        return
    error = config_error(cfg)
    assert error.key == "strategy"
    assert f"method={method} does not run on strategy={strategy}" in str(error)
    listed = str(error).rsplit(f"strategies that fit {method}:", 1)[1]
    assert {name.strip() for name in listed.split(",")} == FITTING[method]


# (group overrides composed by Hydra, {key: value} set on the result, the key the error names, part of its message)
REFUSED = [
    ((), {"train.epochs": 1}, "train.max_steps", "exactly one of train.max_steps and train.epochs"),
    ((), {"train.max_steps": None}, "train.max_steps", "exactly one of train.max_steps and train.epochs"),
    ((), {"train.max_steps": 0}, "train.max_steps", "must be >= 1"),
    ((), {"train.max_steps": None, "train.epochs": 0}, "train.epochs", "must be > 0"),
    ((), {"train.micro_batch_size": 0}, "train.micro_batch_size", "must be >= 1"),
    # The field is typed Any (a number or auto): validation refuses the rest.
    ((), {"train.micro_batch_size": "big"}, "train.micro_batch_size", "must be >= 1 or auto, got 'big'"),
    ((), {"train.micro_batch_size": 2.5}, "train.micro_batch_size", "must be >= 1 or auto, got 2.5"),
    ((), {"train.micro_batch_size": True}, "train.micro_batch_size", "must be >= 1 or auto, got True"),
    ((), {"train.grad_accum": 0}, "train.grad_accum", "must be >= 1"),
    ((), {"train.micro_batch_size": 4, "train.grad_accum": 2, "train.global_batch_size": 10}, "train.global_batch_size",
     "10 != micro_batch_size 4 x grad_accum 2 x world size 2 = 16"),
    ((), {"train.precision": "fp16"}, "train.precision", "fp16 needs a GPU"),
    ((), {"train.precision": "fp8"}, "train.precision", "'fp8'"),
    ((), {"optim.scheduler": "step"}, "optim.scheduler", "cosine, linear, constant"),
    ((), {"optim.lr": 0}, "optim.lr", "must be > 0"),
    ((), {"optim.lr": -1e-4}, "optim.lr", "must be > 0"),
    ((), {"optim.name": "sgd"}, "optim.name", "adamw"),
    ((), {"data.path": "/nonexistent/rows.jsonl"}, "data.path", "file or directory not found"),
    ((), {"data.path": None}, "data.path", "no dataset"),
    ((), {"data.format": "csv"}, "data.format", "alpaca, chat, completion, segments, random_tokens"),
    ((), {"data.val_fraction": 1.0}, "data.val_fraction", "[0, 1)"),
    ((), {"model.tokenizer": "/nonexistent/tokenizer"}, "model.tokenizer", "tokenizer directory not found"),
    ((), {"model.init": "pretrained"}, "model.name_or_path", "set a hub id or a local model directory"),
    ((), {"model.init": "scratch"}, "model.init", "pretrained or random"),
    ((), {"logger.name": "tensorboard"}, "logger.name", "none or wandb"),
    (("method=full", "strategy=zero2"), {"strategy.offload_param": True}, "strategy.offload_param", "stage 3"),
    (("method=full", "strategy=zero1"), {"strategy.offload_param": True}, "strategy.offload_param", "stage 3"),
    (("method=qlora",), {"method.bits": 3}, "method.bits", "got 3"),
    (("method=qlora",), {"method.bits": 16}, "method.bits", "got 16"),
    (("method=qlora",), {"method.quant_type": "int4"}, "method.quant_type", "nf4 or fp4"),
    (("method=lora",), {"method.rank": 0}, "method.rank", "rank must be >= 1"),
    (("method=qlora",), {"method.compute_dtype": "bfloat16"}, "method.compute_dtype", "auto, bf16, fp16, fp32"),
    (("method=qlora",), {"method.quant_storage_dtype": "int4"}, "method.quant_storage_dtype", "got 'int4'"),
    (("strategy=fsdp",), {"strategy.reduce_dtype": "fp16"}, "strategy.reduce_dtype", "fp32 or bf16"),
    # FSDP shards QLoRA's packed 4-bit base: only a 4-bit one, stored in the dtype the all-gather casts to.
    (("method=qlora", "strategy=fsdp"), {"method.bits": 8}, "method.bits", "strategy=ddp for 8 bits"),
    (("method=qlora", "strategy=fsdp"), {"method.use_dora": True}, "method.use_dora", "use strategy=ddp"),
    (("method=qlora", "strategy=fsdp"), {"method.quant_storage_dtype": "bf16"}, "method.quant_storage_dtype",
     "in the compute dtype (fp32)"),
    # DeepSpeed writes its own checkpoints, synchronously: an asynchronous one would be a setting it ignores.
    (("method=full", "strategy=zero2"), {"train.async_checkpoint": True}, "train.async_checkpoint",
     "strategy=zero2 (DeepSpeed) saves synchronously only"),
    ((), {"launcher.collective_timeout_s": 0}, "launcher.collective_timeout_s", "must be > 0 seconds"),
    ((), {"launcher.setup_timeout_s": -1}, "launcher.setup_timeout_s", "must be > 0 seconds"),
]


@pytest.mark.parametrize("overrides, values, key, fragment", REFUSED,
                         ids=[f"{case[2]}-{i}" for i, case in enumerate(REFUSED)])
def test_validate_refuses_naming_the_key(overrides, values, key, fragment):
    error = config_error(compose_cfg(*overrides, values=values))
    assert error.key == key
    assert str(error).startswith(f"{key}: ")
    assert fragment in str(error)


@pytest.mark.parametrize("overrides, values", [
    ((), {"train.max_steps": None, "train.epochs": 0.5}),
    ((), {"train.micro_batch_size": 4, "train.grad_accum": 2, "train.global_batch_size": 16}),
    ((), {"train.micro_batch_size": "auto", "train.global_batch_size": 16}),  # checked when auto is resolved
    ((), {"train.precision": "bf16"}),
    ((), {"train.precision": "fp32"}),
    ((), {"optim.scheduler": "linear"}),
    ((), {"optim.scheduler": "constant"}),
    (("method=full", "strategy=zero3"), {"strategy.offload_param": True}),
    (("method=qlora",), {"method.bits": 8}),
    (("method=qlora",), {"method.quant_type": "fp4"}),
    (("method=qlora", "strategy=fsdp"), {"method.quant_storage_dtype": "fp32"}),
    (("method=qlora", "strategy=ddp"), {"method.use_dora": True}),
])
def test_validate_accepts_the_valid_side_of_each_rule(overrides, values):
    validate(compose_cfg(*overrides, values=values), "cpu", 2)


def test_rules_apply_to_hydra_overrides_too():
    error = config_error(compose_cfg("train.epochs=1"))
    assert error.key == "train.max_steps"
    error = config_error(compose_cfg("method=qlora", "method.bits=3"))
    assert error.key == "method.bits"


def test_fp16_is_refused_on_cpu_only():
    cfg = compose_cfg(values={"train.precision": "fp16"})
    assert config_error(cfg, device_type="cpu").key == "train.precision"
    validate(cfg, "cuda", 2)


def test_global_batch_size_counts_every_rank():
    cfg = compose_cfg(values={"train.micro_batch_size": 2, "train.grad_accum": 3, "train.global_batch_size": 48})
    validate(cfg, "cpu", 8)
    error = config_error(cfg, world_size=4)
    assert "48 != micro_batch_size 2 x grad_accum 3 x world size 4 = 24; train.grad_accum=6 keeps it on 4 rank(s)" \
        in str(error)


def test_local_model_path_needs_a_config_json(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    cfg = compose_cfg(values={"model.init": "pretrained", "model.name_or_path": str(model_dir)})
    error = config_error(cfg)
    assert error.key == "model.name_or_path"
    assert "no config.json" in str(error) and str(model_dir) in str(error)
    (model_dir / "config.json").write_text("{}")
    validate(cfg, "cpu", 2)


def test_relative_model_path_that_does_not_exist_is_refused():
    cfg = compose_cfg(values={"model.init": "pretrained", "model.name_or_path": "./no-such-model"})
    assert config_error(cfg).key == "model.name_or_path"


def test_hub_id_model_is_not_checked_on_disk():
    validate(compose_cfg(values={"model.init": "pretrained", "model.name_or_path": "org/not-on-disk"}), "cpu", 2)


def test_tokenizer_must_be_an_existing_directory(tmp_path):
    tokenizer_file = tmp_path / "tokenizer.json"
    tokenizer_file.write_text("{}")
    assert config_error(compose_cfg(values={"model.tokenizer": str(tokenizer_file)})).key == "model.tokenizer"
    validate(compose_cfg(values={"model.tokenizer": str(tmp_path)}), "cpu", 2)


def test_resume_must_be_none_auto_or_a_directory(tmp_path):
    not_a_dir = tmp_path / "checkpoint.pt"
    not_a_dir.write_text("")
    error = config_error(compose_cfg(values={"resume": str(not_a_dir)}))
    assert error.key == "resume" and "is not a directory" in str(error)
    assert config_error(compose_cfg(values={"resume": str(tmp_path / "missing")})).key == "resume"
    for resume in ("none", "auto", str(tmp_path)):
        validate(compose_cfg(values={"resume": resume}), "cpu", 2)


def test_validate_leaves_the_config_unchanged():
    cfg = compose_cfg("method=full", "strategy=zero3")
    before = OmegaConf.to_container(cfg, resolve=False)
    validate(cfg, "cpu", 2)
    assert OmegaConf.to_container(cfg, resolve=False) == before


# --------------------------------------------------------------------------- the command line

# Each CLI run starts a fresh interpreter. They run in background threads from the start of the module, so
# that their start-up overlaps the in-process tests above; the tests below read their results. Refused runs
# also get a resume path that does not exist: resume is validated last, so if the rule under test let the
# config through, the run still stops before torchrun (and its test fails, the message naming resume instead).

# Refused, naming the key. The first five are refused by Hydra while composing (keys the chosen option's
# schema lacks, wrong types, unknown options); `+` appends even to a structured node, so validate() must
# refuse that one before torchrun starts.
CLI_SCHEMA_ERRORS = {  # case: (overrides, what stderr must name)
    "full-with-rank": (["method=full", "method.rank=8"], "method.rank"),
    "zero3-with-ddp-key": (["method=full", "strategy=zero3", "strategy.bucket_cap_mb=5"], "strategy.bucket_cap_mb"),
    "unknown-key": (["train.foo=1"], "train.foo"),
    "wrong-type": (["train.seq_len=abc"], "train.seq_len"),
    "unknown-option": (["model=gpt5"], "model/gpt5"),
    "appended-key": (["+train.foo=1"], "train.foo"),
}


@pytest.fixture(scope="module", autouse=True)
def cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    backstop = f"resume={root / 'no-such-checkpoint'}"
    cases = {case: (overrides + [backstop], None) for case, (overrides, _) in CLI_SCHEMA_ERRORS.items()}
    cases["cuda-without-gpu"] = (["launcher.device=cuda", backstop], {"CUDA_VISIBLE_DEVICES": ""})
    cases["cfg-job"] = (["method=qlora", "train.seq_len=128"], None)
    runs = {}
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        for case, (overrides, env) in cases.items():
            flags = ["--cfg", "job"] if case == "cfg-job" else []  # Hydra's flags go after the overrides
            runs[case] = pool.submit(run_shardtune, "train", *overrides, f"output_dir={root / case}", *flags,
                                     check=False, env=env)

        class Runs:
            path = root

            def __getitem__(self, case):
                return runs[case].result()

        yield Runs()


@pytest.mark.parametrize("case", CLI_SCHEMA_ERRORS)
def test_cli_refuses_schema_errors_naming_the_key(cli, case):
    result = cli[case]
    assert result.returncode != 0
    assert CLI_SCHEMA_ERRORS[case][1] in result.stderr
    assert "Traceback" not in result.stderr
    assert not (cli.path / case / "config.yaml").exists()


def test_train_refuses_cuda_without_a_gpu(cli):
    result = cli["cuda-without-gpu"]
    assert result.returncode != 0
    assert "config error: launcher.device: cuda was asked for but no GPU is visible" in result.stderr
    assert "Traceback" not in result.stderr and "torch.distributed.run" not in result.stdout + result.stderr
    assert not (cli.path / "cuda-without-gpu" / "config.yaml").exists()


def test_train_cfg_job_prints_the_composed_config_and_starts_nothing(cli):
    result = cli["cfg-job"]
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.method.name == "qlora" and printed.method.bits == 4
    assert printed.train.seq_len == 128 and printed.strategy.name == "ddp" and printed.model.name == "tiny"
    assert printed.output_dir == str(cli.path / "cfg-job")
    assert "torch.distributed.run" not in result.stdout + result.stderr
    assert not (cli.path / "cfg-job").exists()


@pytest.mark.parametrize("strategy, device_type, world_size, advised", [
    ("zero2", "cuda", 1, True), ("zero3", "cuda", 1, True), ("zero3_offload", "cuda", 1, False),
    ("zero2", "cuda", 2, False), ("zero2", "cpu", 1, False), ("fsdp", "cuda", 1, False)])
def test_zero_on_one_gpu_without_offload_is_advised_against(caplog, strategy, device_type, world_size, advised):
    validate(compose_cfg("method=full", f"strategy={strategy}"), device_type, world_size)
    advice = [r.getMessage() for r in caplog.records if "on one GPU" in r.getMessage()]
    assert advice == ([f"strategy={strategy} on one GPU: ZeRO divides the training state among ranks, and one rank "
                       "has nothing to divide; strategy=ddp or fsdp trains the same faster (ZeRO on one GPU pays when "
                       "it offloads to the host: strategy=zero3_offload)"] if advised else [])
