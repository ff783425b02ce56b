"""Under autocast (DDP's mixed precision), LoRA adapters take their inputs as they come: the same gradients as peft's
cast to fp32 and back, and the adapters that read one tensor (query, key, value) keep one copy of it for backward."""
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from shardtune.trainer.model import add_lora, keep_adapter_inputs_as_they_come

from conftest import compose_cfg


def train_step(keep_inputs: bool):
    """The adapters' gradients and the bytes of distinct tensors saved for backward, of one bf16 autocast step."""
    architecture = OmegaConf.to_container(compose_cfg("model=tiny").model.architecture)
    torch.manual_seed(0)
    config = AutoConfig.for_model(**{**architecture, "num_hidden_layers": 2})
    base = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model = add_lora(base, OmegaConf.create({"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["all-linear"],
                                             "use_dora": False}))
    if keep_inputs:
        keep_adapter_inputs_as_they_come(model)
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    ids = torch.randint(0, architecture["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, sum(saved.values())


def test_adapter_inputs_keep_the_gradients_and_are_saved_once():
    cast_loss, cast_grads, cast_bytes = train_step(keep_inputs=False)
    loss, grads, saved_bytes = train_step(keep_inputs=True)
    assert loss == cast_loss
    assert grads.keys() == cast_grads.keys() and len(grads) > 0
    for name, grad in cast_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)
    assert saved_bytes < cast_bytes, (saved_bytes, cast_bytes)
