"""train.activation_checkpointing and its refinements (every k-th layer, the per-op policy, host offload) change
memory, never the gradients; settings that refine checkpointing are refused, naming their key, when it is off."""
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer

from shardtune.errors import ConfigError
from shardtune.launcher.validation import _validate_checkpointing
from shardtune.trainer import activations

from conftest import compose_cfg


@pytest.fixture
def fresh_dynamo():
    """Dynamo with no compiled graphs and its counters (graph breaks, unique graphs) at zero."""
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    return torch._dynamo.utils.counters


VARIANTS = {"every layer": {}, "every 2nd layer": {"activation_checkpointing_every": 2},
            "ops": {"activation_checkpointing_policy": "ops"}, "offloaded": {"activation_offload": True}}


def train_cfg(checkpointing: bool = True, **values):
    defaults = {"activation_checkpointing_every": 1, "activation_checkpointing_policy": "layer",
                "activation_offload": False}
    return OmegaConf.create({"activation_checkpointing": checkpointing, **defaults, **values})


def gradients(cfg, enable=activations.enable, count_calls: bool = True) -> dict:
    architecture = OmegaConf.to_container(compose_cfg("model=tiny").model.architecture)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**architecture, "num_hidden_layers": 4}))
    model.config.use_cache = False
    enable(model, cfg, "cpu")  # on CPU, activation_offload is off (nothing to offload from)
    model.train()
    calls = [0] * len(model.model.layers)
    for index, layer in enumerate(model.model.layers if count_calls else []):  # a hook the compiler would trace
        layer.mlp.register_forward_pre_hook(lambda module, args, index=index: calls.__setitem__(index, calls[index] + 1))
    ids = torch.randint(0, architecture["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    recomputed = [count == 2 for count in calls]  # a checkpointed layer runs its forward again in backward
    return {"flags": recomputed, **{name: p.grad.clone() for name, p in model.named_parameters()}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpointing_keeps_the_gradients(variant):
    plain, checkpointed = gradients(train_cfg(False)), gradients(train_cfg(**VARIANTS[variant]))
    assert plain.pop("flags") == [False] * 4
    flags = checkpointed.pop("flags")
    assert flags == ([True, False, True, False] if variant == "every 2nd layer" else [True] * 4)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_older_transformers_checkpoint_every_kth_layer_too():
    """transformers without activation_checkpointing_enable: the layers' forward wrapped here, every k-th."""
    def enable_as_on_older_transformers(model, cfg, device_type):
        activations._enable_with_older_transformers(model, {"use_reentrant": False}, every=2)

    plain = gradients(train_cfg(False))
    checkpointed = gradients(train_cfg(activation_checkpointing_every=2), enable_as_on_older_transformers)
    plain.pop("flags")
    assert checkpointed.pop("flags") == [True, False, True, False]
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_offloaded_layers_keep_their_tensors_in_host_memory_but_not_their_weights(monkeypatch, fresh_dynamo,
                                                                                  compiled):
    """activation_offload: what each checkpointed layer keeps goes to host memory through hooks around its call,
    outside its compiled block (the compiler does not trace them: no graph break), weights excepted (a compiled block
    keeps its weights for backward), with the gradients unchanged. On CPU there is nothing to offload from, so the
    offload is turned on by hand here, and the copy to host memory records what it is given."""
    import torch._dynamo
    offloaded_storages, copy = [], activations._to_host_memory

    def to_host_memory(tensor):
        offloaded_storages.append(tensor.untyped_storage().data_ptr())
        return copy(tensor)

    monkeypatch.setattr(activations, "_to_host_memory", to_host_memory)
    weights = set()

    def enable_offloaded(model, cfg, device_type):
        activations.enable(model, cfg, "cpu", compiled=compiled)
        activations._offload_what_checkpointed_layers_keep(model, every=2)
        weights.update(param.untyped_storage().data_ptr() for param in model.parameters())
        if compiled:
            for layer in model.model.layers:
                layer.compile()

    plain = gradients(train_cfg(False), count_calls=not compiled)
    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):  # as fast_path.apply sets
        offloaded = gradients(train_cfg(activation_checkpointing_every=2), enable_offloaded, count_calls=not compiled)
    assert offloaded_storages and not weights.intersection(offloaded_storages)
    assert not fresh_dynamo["graph_break"], dict(fresh_dynamo["graph_break"])
    if not compiled:
        assert offloaded["flags"] == [True, False, True, False]
        assert len(offloaded_storages) == 2  # eager: the two checkpointed layers' inputs
    plain.pop("flags"), offloaded.pop("flags")
    for name, grad in plain.items():
        torch.testing.assert_close(offloaded[name], grad, msg=name)


class Transposing(GradientCheckpointingLayer):
    """A decoder layer that keeps a transposed tensor for backward, as a compiled decoder block on a GPU keeps the
    attention output."""
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return torch.sin((x @ self.weight).view(4, 8, 16).transpose(0, 1)).sum()


def test_offloaded_tensors_come_back_with_their_strides():
    """A compiled block's backward checks the size and strides of what it kept (it failed on the GPU, 2026-12-07,
    when the host copy was contiguous)."""
    block = Transposing()
    activations._offload_what_checkpointed_layers_keep(block, every=1)
    block.compile()
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    block(x).backward()
    plain_x = x.detach().clone().requires_grad_()
    Transposing()(plain_x).backward()
    torch.testing.assert_close(x.grad, plain_x.grad)

    transposed = torch.randn(8, 4).t()
    assert activations._to_host_memory(transposed).stride() == transposed.stride()
    assert activations._to_host_memory(torch.randn(8, 4)[:, :2]) is None  # not dense: it stays where it is


def test_the_weights_an_offload_leaves_include_4bit_quantisation_states():
    import bitsandbytes as bnb
    layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(layer.weight.data, requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)._quantize("cpu")
    state = layer.weight.quant_state
    kept = {id(tensor) for tensor in activations._weights(layer)}
    assert {id(layer.weight), id(state.absmax), id(state.code), id(state.state2.absmax)} <= kept


def test_older_transformers_checkpoint_inside_compiled_blocks(fresh_dynamo):
    """The older releases' layers as shardtune checkpoints them on a GPU: compiled blocks with the policy of compiled
    blocks, the checkpoint traced inside each (no graph break), the same gradients as without checkpointing."""
    import torch._dynamo

    def enable_and_compile(model, cfg, device_type):
        kwargs = {"use_reentrant": False, "context_fn": activations._small_products_contexts}
        activations._enable_with_older_transformers(model, kwargs, every=1)
        for layer in model.model.layers:
            layer.compile()

    plain = gradients(train_cfg(False), count_calls=False)
    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):  # as fast_path.apply sets
        checkpointed = gradients(train_cfg(), enable_and_compile, count_calls=False)
    assert not fresh_dynamo["graph_break"], dict(fresh_dynamo["graph_break"])
    assert fresh_dynamo["stats"]["unique_graphs"] >= 1  # the blocks did compile
    plain.pop("flags"), checkpointed.pop("flags")
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


def test_describe_names_what_is_kept_and_where():
    assert activations.describe(train_cfg(False), "cuda") == "activation checkpointing: off"
    everything = train_cfg(activation_checkpointing_every=2, activation_checkpointing_policy="ops",
                           activation_offload=True)
    assert activations.describe(everything, "cuda") == (
        "activation checkpointing: every 2nd layer, matmul and attention outputs kept, in host memory")
    assert activations.describe(everything, "cpu").endswith(
        "kept (offload off: activations are in host memory on CPU)")
    assert activations.describe(train_cfg(), "cuda", compiled=True) == (
        "activation checkpointing: every layer, inputs and matmul outputs under 1/16 of their input (LoRA's x·Aᵀ) "
        "kept")


@pytest.mark.parametrize("key, value", [("activation_checkpointing_every", 2), ("activation_offload", True),
                                        ("activation_checkpointing_policy", "ops")])
def test_refinements_without_checkpointing_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}.*only applies with train.activation_checkpointing=true"):
        _validate_checkpointing(train_cfg(False, **{key: value}))


def test_unknown_policy_and_bad_interval_are_refused():
    with pytest.raises(ConfigError, match="train.activation_checkpointing_policy.*layer, ops"):
        _validate_checkpointing(train_cfg(activation_checkpointing_policy="selective"))
    with pytest.raises(ConfigError, match="train.activation_checkpointing_every.*>= 1"):
        _validate_checkpointing(train_cfg(activation_checkpointing_every=0))
