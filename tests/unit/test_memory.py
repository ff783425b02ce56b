"""Unit tests of the per-GPU memory estimate (shardtune/launcher/memory.py), on the real presets.

Configs are composed from the package's YAML with Hydra. They use initialize_config_dir on the
package's conf/ folder: initialize_config_module("shardtune.conf") needs conf/__init__.py, which
the package does not ship (Hydra refuses a namespace package as the primary config module).
"""
import json
from importlib import resources

import pytest
from hydra import compose, initialize_config_dir

from shardtune.config import register_configs
from shardtune.launcher.memory import GIB, count_parameters, estimate_memory, model_config

LLAMA31_8B_PARAMS = 8_030_261_248
LLAMA32_1B_PARAMS = 1_235_814_400
# r=16 on q,k,v,o,gate,up,down of 32 layers: 32 * 16 * (2*(4096+4096) + 2*(4096+1024) + 3*(4096+14336))
LLAMA31_8B_LORA_R16_ALL_LINEAR = 41_943_040


def compose_cfg(*overrides: str):
    register_configs()
    conf_dir = str(resources.files("shardtune") / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_llama31_8b_parameter_count_matches_the_published_size():
    cfg = compose_cfg("model=llama3.1-8b", "method=full")
    counts = count_parameters(model_config(cfg.model), cfg.method)
    assert counts.total == pytest.approx(8.03e9, rel=0.01)
    assert counts.total == LLAMA31_8B_PARAMS
    assert counts.trainable == counts.total


# The published sizes of the models bigger than one GPU (their model cards): 70.6B, 32.8B, 72.7B.
@pytest.mark.parametrize("preset,published", [("llama3.1-70b", 70.6e9), ("qwen2.5-32b", 32.8e9), ("qwen2.5-72b", 72.7e9)])
def test_large_presets_count_their_published_size(preset, published):
    cfg = compose_cfg(f"model={preset}", "method=full")
    counts = count_parameters(model_config(cfg.model), cfg.method)
    assert counts.total == pytest.approx(published, rel=0.01)
    assert cfg.model.name == preset and cfg.model.architecture.tie_word_embeddings is False


def test_qwen_presets_have_biases_on_q_k_v():
    cfg = compose_cfg("model=qwen2.5-32b", "method=full")
    config = model_config(cfg.model)
    h, kv = config.hidden_size, config.num_key_value_heads * config.hidden_size // config.num_attention_heads
    without_bias = count_parameters(config, cfg.method).total - config.num_hidden_layers * (h + 2 * kv)
    attention = 2 * h * h + 2 * h * kv
    per_layer = attention + 3 * h * config.intermediate_size + 2 * h
    assert without_bias == config.num_hidden_layers * per_layer + 2 * config.vocab_size * h + h


def test_llama32_1b_counts_tied_embeddings_once():
    cfg = compose_cfg("model=llama3.2-1b", "method=full")
    counts = count_parameters(model_config(cfg.model), cfg.method)
    assert counts.total == pytest.approx(1.24e9, rel=0.01)
    assert counts.total == LLAMA32_1B_PARAMS


def test_lora_rank16_all_linear_on_llama31_8b():
    cfg = compose_cfg("model=llama3.1-8b", "method=lora", "method.rank=16")
    counts = count_parameters(model_config(cfg.model), cfg.method)
    assert counts.trainable == LLAMA31_8B_LORA_R16_ALL_LINEAR


def test_named_target_modules_and_dora_magnitude():
    cfg = compose_cfg("model=llama3.1-8b", "method=lora", "method.target_modules=[q_proj,v_proj]")
    config = model_config(cfg.model)
    lora = count_parameters(config, cfg.method).trainable
    assert lora == 32 * 16 * ((4096 + 4096) + (4096 + 1024))
    cfg.method.use_dora = True
    dora = count_parameters(config, cfg.method).trainable
    assert dora - lora == 32 * (4096 + 1024)  # one magnitude per output feature of each adapted layer


def test_target_modules_matching_nothing_names_the_key():
    cfg = compose_cfg("model=tiny", "method=lora", "method.target_modules=[c_attn]")
    with pytest.raises(ValueError, match="method.target_modules"):
        count_parameters(model_config(cfg.model), cfg.method)


def test_zero3_splits_weights_grads_and_optimizer_over_the_world():
    cfg = compose_cfg("model=llama3.1-8b", "method=full", "strategy=zero3")
    one, eight = estimate_memory(cfg, 1), estimate_memory(cfg, 8)
    for component in ("weights", "grads", "optimizer"):
        assert getattr(eight, component) == pytest.approx(getattr(one, component) / 8, rel=1e-6)
    assert eight.activations == one.activations  # data parallel: every GPU runs its own micro-batch
    # DeepSpeed bf16: 2 B weights, 2 B grads, 12 B optimizer (fp32 master + two Adam states)
    assert one.weights == 2 * LLAMA31_8B_PARAMS
    assert one.grads == 2 * LLAMA31_8B_PARAMS
    assert one.optimizer == 12 * LLAMA31_8B_PARAMS


def test_zero1_splits_only_the_optimizer_and_zero2_also_grads():
    zero1 = compose_cfg("model=llama3.1-8b", "method=full", "strategy=zero1")
    one, eight = estimate_memory(zero1, 1), estimate_memory(zero1, 8)
    assert eight.weights == one.weights
    assert eight.grads == one.grads
    assert eight.optimizer == pytest.approx(one.optimizer / 8, rel=1e-6)
    zero2 = estimate_memory(compose_cfg("model=llama3.1-8b", "method=full", "strategy=zero2"), 8)
    assert zero2.weights == one.weights
    assert zero2.grads == pytest.approx(one.grads / 8, rel=1e-6)


def test_ddp_full_keeps_fp32_parameters_and_replicates_everything():
    cfg = compose_cfg("model=llama3.2-1b", "method=full", "strategy=ddp")
    two, eight = estimate_memory(cfg, 2), estimate_memory(cfg, 8)
    assert (eight.weights, eight.grads, eight.optimizer) == (two.weights, two.grads, two.optimizer)
    # fp32 parameters + the 16-bit copies autocast saves for backward
    assert two.weights == (4 + 2) * LLAMA32_1B_PARAMS
    assert two.optimizer == 8 * LLAMA32_1B_PARAMS  # no separate master copy: the parameters are fp32
    cfg.train.activation_checkpointing = True  # copies are then remade per layer during recompute
    assert estimate_memory(cfg, 2).weights == 4 * LLAMA32_1B_PARAMS


def test_ddp_full_on_one_rank_keeps_16_bit_weights_and_fp32_masters():
    one = estimate_memory(compose_cfg("model=llama3.2-1b", "method=full", "strategy=ddp"), 1)
    assert one.weights == 2 * LLAMA32_1B_PARAMS
    assert one.grads == 4 * LLAMA32_1B_PARAMS  # each 16-bit gradient is added into fp32 as it is ready
    assert one.optimizer == (8 + 4) * LLAMA32_1B_PARAMS  # AdamW's two states + the fp32 masters
    assert "master" in one.notes["optimizer"]
    fp32 = estimate_memory(compose_cfg("model=llama3.2-1b", "method=full", "strategy=ddp", "train.precision=fp32"), 1)
    assert (fp32.weights, fp32.optimizer) == (4 * LLAMA32_1B_PARAMS, 8 * LLAMA32_1B_PARAMS)  # fp32: nothing to copy


# Peak torch.cuda.max_memory_allocated measured on one H100 (transformers 5, peft, bf16 autocast,
# sdpa, AdamW, 3 steps) for llama3.2-1b shapes with random weights, micro_batch_size 2, seq_len 2048.
MEASURED_H100_GIB = {("lora", False): 15.53, ("lora", True): 8.64, ("full", False): 30.01, ("full", True): 21.68}


@pytest.mark.parametrize("method,checkpointing", sorted(MEASURED_H100_GIB))
def test_estimate_tracks_a_measured_h100_peak(method, checkpointing):
    cfg = compose_cfg(
        "model=llama3.2-1b", f"method={method}", "strategy=ddp", "train.micro_batch_size=2", "train.seq_len=2048",
        f"train.activation_checkpointing={checkpointing}",
    )
    # The full fine-tunes were measured under autocast, as DDP trains them on several ranks (one rank trains 16-bit
    # weights with fp32 masters since, trainer/master_weights.py).
    estimate = estimate_memory(cfg, 2 if method == "full" else 1)
    measured = MEASURED_H100_GIB[(method, checkpointing)] * GIB
    # max_memory_allocated excludes the CUDA context; that loop freed grads (set_to_none), so at its
    # peak (start of backward) no gradient was alive: the estimate without them should be close,
    # and the conservative total must not fall below the measurement.
    without_grads = estimate.total - estimate.cuda_context - estimate.grads
    assert without_grads == pytest.approx(measured, rel=0.06)
    assert estimate.total > measured


# Peak torch.cuda.max_memory_allocated measured on one H200 (torch 2.11, transformers 5.17, peft; FSDP2 as the FSDP
# strategy wraps it: fully_shard per decoder layer, then the root with reshard_after_forward=False, bf16 params and
# fp32 reduce; fused AdamW; sdpa; random tokens, micro_batch_size 4, seq_len 256; 3 steps) for llama3.1-8b shapes.
# The full fine-tune's reserved memory was 135.8 GiB and nvidia-smi showed 137.1 of 140.4 GiB in use: it fits.
MEASURED_H200_FSDP_GIB = {"lora": 27.71, "full": 123.64}


@pytest.mark.parametrize("method", sorted(MEASURED_H200_FSDP_GIB))
def test_fsdp_estimate_tracks_a_measured_h200_peak(method):
    estimate = estimate_memory(compose_cfg("model=llama3.1-8b", f"method={method}", "strategy=fsdp"), 1)
    measured = MEASURED_H200_FSDP_GIB[method] * GIB
    # The full fine-tune's gradients are all alive at its peak (the end of backward): the sum of the rows it is.
    assert estimate.total - estimate.cuda_context == pytest.approx(measured, rel=0.08)


def test_zero3_offload_leaves_no_weights_or_optimizer_on_the_gpu():
    cfg = compose_cfg("model=llama3.1-8b", "method=full", "strategy=zero3_offload")
    estimate = estimate_memory(cfg, 8)
    assert estimate.weights == 0
    assert estimate.optimizer == 0
    assert estimate.grads > 0
    assert "offload_param" in estimate.notes["weights"]


def test_qlora_4bit_weights_of_an_8b_model_fit_in_5_to_6_gib():
    cfg = compose_cfg("model=llama3.1-8b", "method=qlora", "strategy=ddp")
    weights_gib = estimate_memory(cfg, 1).weights / GIB
    assert 5.0 < weights_gib < 6.0
    cfg.method.double_quant = False  # fp32 absmax per 64 weights: 0.5 bit instead of ~0.127
    quantized = count_parameters(model_config(cfg.model), cfg.method).quantizable
    extra_gib = estimate_memory(cfg, 1).weights / GIB - weights_gib
    assert extra_gib == pytest.approx(quantized * (0.5 - 0.127) / 8 / GIB, rel=0.01)


def test_qlora_8bit_weights_are_about_one_byte_per_linear_weight():
    cfg = compose_cfg("model=llama3.1-8b", "method=qlora", "method.bits=8", "strategy=ddp")
    counts = count_parameters(model_config(cfg.model), cfg.method)
    expected = counts.quantizable + 2 * (counts.total - counts.quantizable) + 4 * counts.trainable
    assert estimate_memory(cfg, 1).weights == expected


def test_qlora_under_fsdp_splits_the_quantized_base():
    # The FSDP loader quantizes one whole weight at a time and each rank keeps its shard of the packed storage.
    cfg = compose_cfg("model=llama3.1-8b", "method=qlora", "strategy=fsdp")
    counts = count_parameters(model_config(cfg.model), cfg.method)
    quantized_bytes = counts.quantizable * 4.127 / 8
    one, eight = estimate_memory(cfg, 1), estimate_memory(cfg, 8)
    assert one.weights > quantized_bytes
    assert eight.weights == pytest.approx(one.weights / 8, rel=1e-6)
    assert "split over 8 GPUs" in eight.notes["weights"] and "replicated" not in eight.notes["weights"]


def test_lora_under_fsdp_splits_the_base():
    cfg = compose_cfg("model=llama3.1-8b", "method=lora", "strategy=fsdp")
    one, eight = estimate_memory(cfg, 1), estimate_memory(cfg, 8)
    assert one.weights == 2 * LLAMA31_8B_PARAMS + 4 * LLAMA31_8B_LORA_R16_ALL_LINEAR
    assert eight.weights == pytest.approx(one.weights / 8, rel=1e-6)


def test_activation_checkpointing_lowers_activations():
    plain = compose_cfg("model=llama3.1-8b", "method=lora", "train.seq_len=2048")
    checkpointed = compose_cfg("model=llama3.1-8b", "method=lora", "train.seq_len=2048", "train.activation_checkpointing=true")
    without, with_checkpointing = estimate_memory(plain, 1), estimate_memory(checkpointed, 1)
    assert with_checkpointing.activations < without.activations / 5
    assert with_checkpointing.logits == without.logits  # the loss still needs the full logits


def test_selective_checkpointing_and_offload_sit_between_none_and_full():
    base = ("model=llama3.1-8b", "method=lora", "train.seq_len=2048", "train.micro_batch_size=2")
    ac = ("train.activation_checkpointing=true",)
    plain, full, half, ops, offloaded = (estimate_memory(compose_cfg(*base, *extra), 1) for extra in [
        (), ac, (*ac, "train.activation_checkpointing_every=2"), (*ac, "train.activation_checkpointing_policy=ops"),
        (*ac, "train.activation_offload=true")])
    assert full.activations < ops.activations < half.activations < plain.activations
    s, b, h, layers = 2048, 2, 4096, 32
    one_layer = plain.activations // layers
    # Every second layer checkpointed: 16 keep their input, 16 keep everything, and one is recomputed.
    assert half.activations == pytest.approx(16 * s * b * h * 2 + 17 * one_layer, rel=1e-6)
    # Offloaded: the layer inputs move from the GPU into the node's host memory.
    kept_inputs = layers * s * b * h * 2
    assert full.activations - offloaded.activations == kept_inputs
    assert offloaded.host.bytes_of("offloaded") - full.host.bytes_of("offloaded") == kept_inputs
    assert "host memory" in offloaded.notes["activations"]


def test_eager_attention_adds_the_score_matrix_and_fp32_doubles_activations():
    sdpa = estimate_memory(compose_cfg("model=llama3.1-8b", "train.seq_len=1024"), 1)
    eager = estimate_memory(compose_cfg("model=llama3.1-8b", "train.seq_len=1024", "model.attn_implementation=eager"), 1)
    fp32 = estimate_memory(compose_cfg("model=llama3.1-8b", "train.seq_len=1024", "train.precision=fp32"), 1)
    s, b, h, layers, heads = 1024, 4, 4096, 32, 32
    assert eager.activations - sdpa.activations == layers * s * b * h * 5 * heads * s // h
    assert fp32.activations == 2 * sdpa.activations


def test_logits_dominate_a_small_model_with_a_big_vocabulary():
    cfg = compose_cfg("model=qwen2.5-0.5b", "method=lora", "train.seq_len=2048", "train.activation_checkpointing=true")
    estimate = estimate_memory(cfg, 1)
    assert estimate.logits == 4 * 2048 * 151936 * 12  # DDP: 12 B per logit (8 under FSDP2)
    assert estimate.logits > estimate.activations


def test_local_model_directory_with_config_json(tmp_path):
    architecture = {
        "model_type": "llama", "vocab_size": 320, "hidden_size": 128, "intermediate_size": 352,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(architecture))
    cfg = compose_cfg("model=tiny", "method=full")
    cfg.model.architecture = {}
    cfg.model.name_or_path = str(tmp_path)
    config = model_config(cfg.model)
    assert (config.hidden_size, config.num_hidden_layers) == (128, 4)
    attention = 128 * 128 * 2 + 128 * 64 * 2  # q, o and the grouped k, v
    per_layer = attention + 3 * 128 * 352 + 2 * 128  # + gate/up/down + two RMSNorms
    expected = 4 * per_layer + 2 * 320 * 128 + 128  # + embeddings, head, final norm
    assert count_parameters(config, cfg.method).total == expected
    assert estimate_memory(cfg, 2).total > 0


def test_directory_without_config_json_names_the_key(tmp_path):
    cfg = compose_cfg("model=tiny")
    cfg.model.architecture = {}
    cfg.model.name_or_path = str(tmp_path)
    with pytest.raises(ValueError, match="model.name_or_path"):
        model_config(cfg.model)


def test_bad_model_path_names_the_key(tmp_path):
    cfg = compose_cfg("model=tiny")
    cfg.model.architecture = {}
    cfg.model.name_or_path = str(tmp_path / "no" / "such-model")
    with pytest.raises(ValueError, match="model.name_or_path"):
        model_config(cfg.model)


def test_bad_precision_names_the_key():
    cfg = compose_cfg("model=tiny", "train.precision=int3")
    with pytest.raises(ValueError, match="train.precision"):
        estimate_memory(cfg, 1)


def test_format_lists_every_component_and_the_total():
    cfg = compose_cfg("model=llama3.1-8b", "method=qlora", "strategy=fsdp")
    estimate = estimate_memory(cfg, 8)
    table = estimate.format()
    for name in ("weights", "grads", "optimizer", "gathered", "activations", "logits", "cuda_context", "total",
                 "transient", "processes", "loading", "offloaded"):
        assert name in table
    steady_total = next(line for line in table.splitlines() if line.startswith("total"))
    assert f"{estimate.total / GIB:.2f}" in steady_total
    assert f"peak per GPU: {estimate.peak_per_gpu / GIB:.2f} GiB" in table.splitlines()[-1]
    assert estimate.total == sum(getattr(estimate, name) for name in estimate.COMPONENTS)
    assert all(note for _, _, note in estimate.rows())
    assert all(note for table in (estimate.load, estimate.host) for _, _, note in table.rows)


# --------------------------------------------------------------------------- gathered, load peak, host RAM

LLAMA31_8B_ROOT = 2 * 128256 * 4096 + 4096  # embeddings, head, final norm
LLAMA31_8B_LAYER = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096  # attention, MLP, two norms
LLAMA31_70B_UP_PROJ = 8192 * 28672  # the largest linear weight


def test_fsdp_keeps_the_root_and_two_layers_whole_in_16_bit():
    cfg = compose_cfg("model=llama3.1-8b", "method=lora", "strategy=fsdp")
    adapters_per_layer = LLAMA31_8B_LORA_R16_ALL_LINEAR // 32
    layer = 2 * (LLAMA31_8B_LAYER + adapters_per_layer)  # gathered in bf16, adapters cast too
    layer_grads = 4 * adapters_per_layer  # fp32, before the reduce-scatter
    one, eight = estimate_memory(cfg, 1), estimate_memory(cfg, 8)
    assert eight.gathered == one.gathered == 2 * LLAMA31_8B_ROOT + 2 * layer + layer_grads  # no sharding of copies
    assert eight.total == sum(getattr(eight, name) for name in eight.COMPONENTS)
    cfg.strategy.reshard_after_forward = False  # every layer stays gathered until its backward
    assert estimate_memory(cfg, 8).gathered == 2 * LLAMA31_8B_ROOT + 32 * layer + layer_grads


def test_fsdp_cpu_offload_leaves_only_the_gathered_copies_on_the_gpu():
    cfg = compose_cfg("model=llama3.1-8b", "method=full", "strategy=fsdp", "strategy.cpu_offload=true")
    estimate = estimate_memory(cfg, 1)
    assert estimate.weights == estimate.grads == estimate.optimizer == 0
    assert estimate.gathered == 2 * LLAMA31_8B_ROOT + 2 * 2 * LLAMA31_8B_LAYER + 4 * LLAMA31_8B_LAYER


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2"])
def test_strategies_that_keep_whole_parameters_gather_nothing(strategy):
    cfg = compose_cfg("model=llama3.2-1b", "method=full", f"strategy={strategy}")
    estimate = estimate_memory(cfg, 8)
    assert estimate.gathered == 0 and estimate.notes["gathered"].startswith("none")


def test_fsdp_qlora_load_peak_is_its_shards_and_one_weight_being_quantized():
    cfg = compose_cfg("model=llama3.1-70b", "method=qlora", "strategy=fsdp")
    estimate = estimate_memory(cfg, 2)
    transient = int(1.5 * 2 * LLAMA31_70B_UP_PROJ)
    assert estimate.load.bytes_of("weights") == estimate.weights
    assert estimate.load.bytes_of("transient") == transient
    assert estimate.load.total == estimate.weights + transient + estimate.cuda_context
    assert estimate.peak_per_gpu == estimate.total > estimate.load.total


def test_ddp_loads_the_whole_fp32_model_on_every_gpu():
    cfg = compose_cfg("model=llama3.2-1b", "method=full", "strategy=ddp")
    estimate = estimate_memory(cfg, 8)
    assert estimate.load.bytes_of("weights") == 4 * LLAMA32_1B_PARAMS
    assert estimate.load.bytes_of("transient") == 0


def test_zero2_peaks_while_loading_when_its_steps_are_light():
    # The trainer moves the fp32 model to the GPU before DeepSpeed casts it to 16-bit and shards the rest.
    cfg = compose_cfg("model=llama3.1-8b", "method=full", "strategy=zero2", "train.activation_checkpointing=true")
    estimate = estimate_memory(cfg, 64)
    assert estimate.load.total == 4 * LLAMA31_8B_PARAMS + estimate.cuda_context
    assert estimate.peak_per_gpu == estimate.load.total > estimate.total
    assert "peak per GPU" in estimate.format() and "(the larger of loading and the training step: loading)" \
        in estimate.format()


def test_ddp_host_ram_holds_one_copy_per_rank_while_loading():
    cfg = compose_cfg("model=llama3.2-1b", "method=full", "strategy=ddp")
    estimate = estimate_memory(cfg, 8)
    assert estimate.host.bytes_of("loading") == 8 * 4 * LLAMA32_1B_PARAMS
    assert estimate.host.bytes_of("processes") == 8 * 2 * GIB + 1 * GIB
    assert estimate.host.total == estimate.host.bytes_of("processes") + estimate.host.bytes_of("loading")
    lora = estimate_memory(compose_cfg("model=llama3.2-1b", "method=lora", "strategy=ddp"), 8)
    lora_adapters = lora.num_trainable_parameters
    assert lora.host.bytes_of("loading") == 8 * (2 * LLAMA32_1B_PARAMS + 4 * lora_adapters)  # bf16 base
    qlora = estimate_memory(compose_cfg("model=llama3.2-1b", "method=qlora", "strategy=ddp"), 8)
    # one 16-bit tensor a rank at a time (the embedding, the largest): the rest goes to the GPU
    assert qlora.host.bytes_of("loading") == 8 * 2 * 128256 * 2048


def test_zero3_loads_one_gathered_fp32_tensor_per_rank_at_a_time():
    cfg = compose_cfg("model=llama3.1-8b", "method=full", "strategy=zero3")
    two, eight = estimate_memory(cfg, 2), estimate_memory(cfg, 8)
    embedding = 4 * 128256 * 4096  # the largest tensor, fp32; rank 0 also holds the copy it read
    assert (two.host.bytes_of("loading"), eight.host.bytes_of("loading")) == (3 * embedding, 9 * embedding)


def test_offloaded_states_are_split_over_the_nodes():
    cfg = compose_cfg("model=llama3.1-8b", "method=full", "strategy=fsdp", "strategy.cpu_offload=true")
    one_node = estimate_memory(cfg, 8)
    cfg.launcher.nnodes = 2
    two_nodes = estimate_memory(cfg, 16)
    state = (4 + 4 + 8 + 4) * LLAMA31_8B_PARAMS  # fp32 parameters, fp32 gradients, AdamW, the CPU step's temporaries
    assert one_node.host.bytes_of("offloaded") == state
    assert two_nodes.host.bytes_of("offloaded") == state // 2
    assert two_nodes.host.bytes_of("processes") == one_node.host.bytes_of("processes")  # 8 workers a node either way
    zero3_offload = estimate_memory(compose_cfg("model=llama3.1-8b", "method=full", "strategy=zero3_offload"), 8)
    assert zero3_offload.host.bytes_of("offloaded") == (16 + 2) * LLAMA31_8B_PARAMS


def test_cpu_workers_hold_their_training_state_in_host_ram_and_the_tiny_model_is_small():
    cfg = compose_cfg("model=tiny", "method=lora", "launcher.device=cpu", "train.precision=fp32")
    estimate = estimate_memory(cfg, 2)
    training = estimate.host.bytes_of("training")
    assert training == 2 * (estimate.total - estimate.cuda_context)
    assert estimate.host.total == estimate.host.bytes_of("processes") + training
    assert estimate.host.total < 4 * GIB  # the test suite's runs are never refused by the host check
