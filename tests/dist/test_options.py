"""Options that change how a step is computed but not what it computes give the same losses; the
optional method variants (DoRA, 8-bit base, named target modules) train."""
import pytest

from conftest import FAST, read_metrics, run_shardtune, train_losses


def losses_of(tmp_path, name, *overrides):
    output_dir = tmp_path / name
    no_dropout = [] if "method=full" in overrides else ["method.dropout=0"]  # LoRA dropout draws random masks
    run_shardtune("train", f"output_dir={output_dir}", *FAST, *overrides, *no_dropout)
    return train_losses(output_dir)


def test_grad_accum_matches_a_bigger_micro_batch(tmp_path, shared_run):
    # Loss is normalised by the label tokens of the whole step, so 2 micro-batches of 2 are one of 4 (FAST's).
    whole = train_losses(shared_run("lora-ddp"))
    accumulated = losses_of(tmp_path, "accumulated", "train.micro_batch_size=2", "train.grad_accum=2")
    for step, loss in whole.items():
        assert accumulated[step] == pytest.approx(loss, rel=1e-4), f"step {step}"


@pytest.mark.parametrize("method,strategy,refinements", [
    ("full", "zero3", []), ("lora", "fsdp", []),
    ("lora", "ddp", ["train.activation_checkpointing_every=2", "train.activation_checkpointing_policy=ops"])])
def test_activation_checkpointing_changes_memory_not_math(tmp_path, shared_run, method, strategy, refinements):
    plain = train_losses(shared_run(f"{method}-{strategy}"))
    recomputed = losses_of(tmp_path, "recomputed", f"method={method}", f"strategy={strategy}",
                           "train.activation_checkpointing=true", *refinements)
    for step, loss in plain.items():
        assert recomputed[step] == pytest.approx(loss, rel=1e-5), f"step {step}"


@pytest.mark.parametrize("overrides", [
    ["method=lora", "strategy=fsdp", "method.use_dora=true"],
    # A whole run through the real command, and the cheapest: `make test-fast` takes it.
    pytest.param(["method=lora", "strategy=ddp", "method.target_modules=[q_proj,v_proj]", "method.rank=4"],
                 marks=pytest.mark.fast),
], ids=["dora-fsdp", "named-targets"])
def test_method_variants_train(tmp_path, overrides):
    losses = losses_of(tmp_path, "run", *overrides)
    assert losses[8] < losses[1] - 0.3, losses


def test_int8_base_trains(shared_run):
    losses = train_losses(shared_run("qlora8-ddp"))
    assert losses[8] < losses[1] - 0.3, losses


def test_epochs_set_the_number_of_steps(tmp_path):
    # 1600 training rows / (4 rows x 2 ranks) = 200 micro-batches per rank per epoch; 0.045 epoch -> 9 steps.
    output_dir = tmp_path / "epochs"
    run_shardtune("train", f"output_dir={output_dir}", *[o for o in FAST if "max_steps" not in o],
                  "train.epochs=0.045", "train.max_steps=null")
    assert max(row["step"] for row in read_metrics(output_dir)) == 9
