"""Every required (method, strategy) pair trains on 2 gloo workers, its loss falls, and strategies
that do the same math agree step by step."""
import pytest

from conftest import FAST, run_shardtune, train_losses

PAIRS = [("full", "zero1"), ("full", "zero2"), ("full", "zero3"), ("full", "zero3_offload"),
         ("full", "ddp"), ("full", "fsdp"), ("lora", "ddp"), ("lora", "fsdp"), ("qlora", "ddp"), ("qlora", "fsdp")]
# Same seed, data and math; only the order of floating-point sums differs between strategies.
AGREEMENT_RTOL = 2e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train each pair once; the tests below read the run directories."""
    root = tmp_path_factory.mktemp("matrix")
    done = {}
    for method, strategy in PAIRS:
        output_dir = root / f"{method}-{strategy}"
        extra = [] if method == "full" else ["method.dropout=0"]  # dropout masks would differ between wrappers
        run_shardtune("train", f"method={method}", f"strategy={strategy}", f"output_dir={output_dir}", *FAST, *extra)
        done[(method, strategy)] = output_dir
    return done


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_pair_trains_and_loss_falls(runs, pair):
    losses = train_losses(runs[pair])
    assert sorted(losses) == list(range(1, 9))
    first, last = losses[1], losses[8]
    assert last < first - 0.3, f"{pair}: loss went from {first:.4f} to {last:.4f}"
    final = runs[pair] / "final"
    expected = "adapter_model.safetensors" if pair[0] != "full" else "model.safetensors"
    assert (final / expected).is_file() and (final / "tokenizer.json").is_file()


@pytest.mark.parametrize("group", [
    [("full", s) for s in ("zero1", "zero2", "zero3", "zero3_offload", "ddp", "fsdp")],
    [("lora", "ddp"), ("lora", "fsdp")],
    [("qlora", "ddp"), ("qlora", "fsdp")],
], ids=["full-zero-ddp-fsdp", "lora-ddp-fsdp", "qlora-ddp-fsdp"])
def test_strategies_agree_step_by_step(runs, group):
    reference = train_losses(runs[group[0]])
    for pair in group[1:]:
        losses = train_losses(runs[pair])
        for step, loss in reference.items():
            assert losses[step] == pytest.approx(loss, rel=AGREEMENT_RTOL), f"{pair} vs {group[0]} at step {step}"
