"""train.lora_kernel=fused: each plain peft LoRA layer becomes one operator (the adapters' product added in the base
matmul's epilogue) with the same values and gradients as peft's forward, falling back to peft's forward where the
layer is not plain or its adapter is not simply active; auto fuses on CUDA for method=lora only."""
import copy

import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from shardtune.errors import ConfigError
from shardtune.trainer.fast_path import choose
from shardtune.trainer.fused_lora import fuse

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256)


def peft_model(model_type: str = "llama", dropout: float = 0.0, enable_checkpointing=None, rank: int = 8, **lora):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **TINY))
    if enable_checkpointing:
        enable_checkpointing(base)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout,
                                            target_modules="all-linear", **lora))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would hide a wrong product or gradient
            torch.nn.init.normal_(param, std=0.1)
    return model


def loss_and_grads(model, ids):
    torch.manual_seed(1)  # the same dropout masks
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {name: param.grad for name, param in model.named_parameters() if param.requires_grad}


@pytest.mark.parametrize("model_type,dropout", [("llama", 0.0), ("llama", 0.1), ("qwen2", 0.0)])  # qwen2: q/k/v bias
def test_fused_layers_give_peft_values_and_gradients(model_type, dropout):
    reference = peft_model(model_type, dropout)
    fused = copy.deepcopy(reference)
    assert fuse(fused) == (14, 14)
    ids = torch.randint(0, TINY["vocab_size"], (2, 16))
    loss, grads = loss_and_grads(reference, ids)
    fused_loss, fused_grads = loss_and_grads(fused, ids)
    assert fused_loss == pytest.approx(loss, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_disabled_or_merged_adapters_take_peft_forward():
    model = peft_model()
    fuse(model)
    ids = torch.randint(0, TINY["vocab_size"], (1, 8))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base, atol=1e-3)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_only_plain_layers_are_fused():
    assert fuse(peft_model(use_dora=True)) == (0, 14)


def cfgs(lora_kernel: str, method: str = "lora", use_dora: bool = False):
    train = OmegaConf.create({"kernels": "none", "compile": "none", "lora_kernel": lora_kernel})
    return train, OmegaConf.create({"name": method, "use_dora": use_dora})


def test_auto_fuses_lora_on_cuda_only_and_says_why_not():
    assert choose(*cfgs("auto"), "cuda", "llama").describe() == "kernels: none; compile: none; lora: fused"
    assert "fused LoRA off: auto fuses on CUDA only" in choose(*cfgs("auto"), "cpu", "llama").describe()
    assert "fused LoRA off: not for QLoRA" in choose(*cfgs("auto", "qlora"), "cuda", "llama").describe()
    assert not choose(*cfgs("auto", "full"), "cuda", "llama").fused_lora
    assert choose(*cfgs("peft"), "cuda", "llama").describe() == "kernels: none; compile: none"
    assert choose(*cfgs("fused"), "cpu", "llama").fused_lora  # the operator runs anywhere when asked for


def test_fused_by_name_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="train.lora_kernel.*not for QLoRA"):
        choose(*cfgs("fused", "qlora"), "cuda", "llama")
    with pytest.raises(ConfigError, match="train.lora_kernel.*not for DoRA"):
        choose(*cfgs("fused", use_dora=True), "cuda", "llama")


def compiled_block_ops(fused: bool, compiled_policy: bool) -> dict:
    """The operators of a checkpointed decoder block's compiled forward and backward graphs, counted by name."""
    import collections

    import torch._dynamo
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._functorch.aot_autograd import aot_module_simplified

    from shardtune.trainer import activations
    from shardtune.trainer.model import decoder_layers

    graphs = {}

    def keep(name):
        def compiler(graph, _):
            graphs[name] = graph
            return make_boxed_func(graph.forward)
        return compiler

    def backend(graph_module, inputs):
        return aot_module_simplified(graph_module, inputs, fw_compiler=keep("forward"), bw_compiler=keep("backward"),
                                     partition_fn=min_cut_rematerialization_partition)

    train = OmegaConf.create({"activation_checkpointing": True, "activation_checkpointing_every": 1,
                              "activation_checkpointing_policy": "layer", "activation_offload": False})
    # Rank 2 of 64: x·Aᵀ as narrow against its input as rank 16 of a 1B model's 2048 or more.
    model = peft_model(enable_checkpointing=lambda base: activations.enable(base, train, "cpu", compiled_policy),
                       rank=2)
    if fused:
        fuse(model)
    torch._dynamo.reset()
    decoder_layers(model)[0].compile(backend=backend)
    ids = torch.randint(0, TINY["vocab_size"], (2, 16))
    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):  # as fast_path.apply
        model(input_ids=ids, labels=ids).loss.backward()
    torch._dynamo.reset()
    ops = {name: collections.Counter(str(node.target).removesuffix(".default") for node in graph.graph.nodes
                                     if node.op == "call_function") for name, graph in graphs.items()}
    ops["grads"] = {name: param.grad for name, param in model.named_parameters() if param.requires_grad}
    return ops


def test_a_checkpointed_compiled_block_recomputes_no_base_matmul_backward_does_not_need():
    """The adapters' x Aᵀ is an operation of its own, so a checkpointed block's recompute repeats the fused layers
    whose outputs backward needs (6 of a Llama block's 7), not the last one (down_proj, whose output only joins the
    residual stream)."""
    ops = compiled_block_ops(fused=True, compiled_policy=False)
    assert ops["forward"]["shardtune.lora_linear"] == 7 and ops["forward"]["aten.mm"] == 7  # x Aᵀ
    assert ops["backward"]["shardtune.lora_linear"] == 6
    assert ops["backward"]["shardtune.lora_linear_input_grad"] == 7
    assert ops["backward"]["aten.mm"] == 7 + 3 * 7  # x Aᵀ again; dy B, the gradients of A and of B


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "peft"])
def test_compiled_checkpointed_blocks_keep_the_adapters_small_products(fused):
    """The `layer` policy in compiled blocks keeps x Aᵀ rather than reading x again in backward to recompute it: 7
    fewer matmuls in the backward graph, fused layers or peft's, and the same gradients."""
    recomputed, kept = compiled_block_ops(fused, compiled_policy=False), compiled_block_ops(fused, compiled_policy=True)
    assert kept["backward"]["aten.mm"] == recomputed["backward"]["aten.mm"] - 7
    for name, grad in recomputed["grads"].items():
        torch.testing.assert_close(kept["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)
