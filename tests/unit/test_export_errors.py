"""Every way `load_trained_model` and `shardtune export` refuse a run directory, checkpoint or output
directory, each with a message naming the path. The run directories here are fakes (a config.yaml and
empty folders): every refusal happens before a model is loaded. Round trips are in tests/dist/test_export.py."""
import pytest
from conftest import compose_cfg, run_shardtune
from omegaconf import OmegaConf

from shardtune.export import ExportError, export_command, export_model
from shardtune.finished_run import RunDirError, load_trained_model, resolve_source


def fake_run(run_dir, method="lora", final=True, checkpoints=(), incomplete=()):
    """A run directory as training leaves it, without any weights: final/ and checkpoints/step-N/ folders
    (DCP-style: state/.metadata) with or without their COMPLETE marker."""
    cfg = compose_cfg(f"method={method}", values={"output_dir": str(run_dir), "train.precision": "fp32"})
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if final:
        (run_dir / "final").mkdir()
    for step in (*checkpoints, *incomplete):
        (run_dir / "checkpoints" / f"step-{step}" / "state").mkdir(parents=True)
        (run_dir / "checkpoints" / f"step-{step}" / "state" / ".metadata").touch()
    for step in checkpoints:
        (run_dir / "checkpoints" / f"step-{step}" / "COMPLETE").touch()
    return run_dir


def refusal(*args, **kwargs) -> str:
    with pytest.raises(RunDirError) as info:
        load_trained_model(*args, **kwargs)
    return str(info.value)


def test_missing_run_dir(tmp_path):
    assert f"run directory {tmp_path / 'nope'} does not exist" in refusal(tmp_path / "nope")


def test_run_dir_without_config(tmp_path):
    assert f"no {tmp_path / 'config.yaml'}" in refusal(tmp_path)


def test_no_final_and_no_checkpoint(tmp_path):
    run = fake_run(tmp_path / "run", final=False)
    message = refusal(run)
    assert f"{run} has no final/" in message and f"no complete checkpoints in {run / 'checkpoints'}" in message


def test_no_final_lists_the_checkpoints_to_choose_from(tmp_path):
    run = fake_run(tmp_path / "run", final=False, checkpoints=(4, 8), incomplete=(12,))
    message = refusal(run)
    assert f"{run} has no final/" in message and "step-4, step-8" in message and "step-12" not in message


def test_unknown_checkpoint_name_lists_the_available_ones(tmp_path):
    run = fake_run(tmp_path / "run", checkpoints=(4, 8))
    message = refusal(run, "step-99")
    assert "unknown checkpoint 'step-99'" in message and str(run / "checkpoints" / "step-99") in message
    assert f"complete checkpoints in {run / 'checkpoints'}: step-4, step-8" in message


def test_checkpoint_path_that_does_not_exist(tmp_path):
    run = fake_run(tmp_path / "run", checkpoints=(4,))
    assert f"checkpoint {tmp_path / 'elsewhere'} is not a directory" in refusal(run, str(tmp_path / "elsewhere"))


@pytest.mark.parametrize("as_path", [False, True], ids=["by-name", "by-path"])
def test_checkpoint_without_complete_marker(tmp_path, as_path):
    run = fake_run(tmp_path / "run", checkpoints=(4,), incomplete=(8,))
    path = run / "checkpoints" / "step-8"
    message = refusal(run, str(path) if as_path else "step-8")
    assert f"checkpoint {path} is not complete (no COMPLETE marker" in message


def test_complete_checkpoint_without_weights(tmp_path):
    run = fake_run(tmp_path / "run")
    path = run / "checkpoints" / "step-4"
    path.mkdir(parents=True)
    (path / "COMPLETE").touch()
    assert f"checkpoint {path} holds neither" in refusal(run, "step-4")


def test_random_init_base_missing(tmp_path):
    # A LoRA checkpoint holds only the adapters; the base comes from <run>/random-init, which is gone.
    run = fake_run(tmp_path / "run", checkpoints=(4,))
    assert f"base model {run / 'random-init'} is missing" in refusal(run, "step-4")


def test_resolve_source_picks_final_or_the_named_checkpoint(tmp_path):
    run = fake_run(tmp_path / "run", checkpoints=(4,))
    assert resolve_source(run).path == run / "final" and resolve_source(run).kind == "final"
    assert resolve_source(run, "step-4").path == run / "checkpoints" / "step-4"
    assert resolve_source(run, str(run / "checkpoints" / "step-4")).kind == "dcp"


def test_export_refuses_a_non_empty_output_before_loading_anything(tmp_path):
    run = fake_run(tmp_path / "run")  # final/ is empty: loading it would fail with another message
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=f"output directory {output} already exists and is not empty.*--force"):
        export_model(run, output)
    assert (output / "keep.txt").read_text() == "mine" and not (tmp_path / "out.tmp").exists()


def test_export_refuses_an_output_that_is_a_file(tmp_path):
    run = fake_run(tmp_path / "run")
    (tmp_path / "out").write_text("x")
    with pytest.raises(ExportError, match=f"{tmp_path / 'out'} exists and is not a directory"):
        export_model(run, tmp_path / "out", force=True)


def test_export_refuses_an_unknown_dtype(tmp_path):
    with pytest.raises(ExportError, match="dtype: expected one of bf16, fp16, fp32, got 'int4'"):
        export_model(fake_run(tmp_path / "run"), dtype="int4")


def test_export_command_exits_with_the_message(tmp_path, capsys):
    run = fake_run(tmp_path / "run", checkpoints=(4,))
    with pytest.raises(SystemExit) as info:
        export_command([str(run), "--checkpoint", "step-7"])
    assert str(info.value).startswith("shardtune: export: unknown checkpoint 'step-7'")
    with pytest.raises(SystemExit) as info:
        export_command([str(run), "--dtype", "int4"])
    assert info.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err


def test_shardtune_export_dispatches_without_hydra_and_prints_no_traceback(tmp_path):
    result = run_shardtune("export", str(tmp_path / "missing"), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"shardtune: export: run directory {tmp_path / 'missing'} does not exist")
    assert "Traceback" not in result.stderr
