"""`shardtune eval <run_dir>`: what fine-tuning changed, measured on held-out rows.

For the run's final model (or any complete checkpoint), on the test split by default: token-weighted loss
and perplexity, and for data with answers (alpaca, chat) greedy generation scored with exact match and
ROUGE-L. With --compare-base the model the run started from is measured the same way in the same call
(for LoRA the adapters are switched off; for full fine-tuning the base weights are loaded). Results go
to <run>/eval.json (eval-step-N.json for a checkpoint), the console, and the run's W&B run.
"""
import argparse
import math
import time
from pathlib import Path
from typing import List, Optional

import torch
from omegaconf import OmegaConf

from ..data import Collator, load_or_build
from ..data.tokenize import IGNORE_INDEX
from ..errors import DataError
from ..run_dir import EVAL_FILE, write_json_atomic
from .generate import greedy_token_ids
from .scores import exact_match, rouge_l

NUM_SAMPLES_SAVED = 20  # predictions kept in eval.json and W&B for people to read


@torch.no_grad()
def loss_and_perplexity(model, rows, pad_token_id: int, batch_size: int, device) -> dict:
    collate = Collator(pad_token_id)
    loss_sum, num_tokens = 0.0, 0
    model.eval()
    for start in range(0, len(rows), batch_size):
        batch = collate(rows.select(range(start, min(start + batch_size, len(rows)))).to_list())
        batch = {k: v.to(device) for k, v in batch.items() if k != "num_tokens"}
        loss_sum += model(**batch, num_items_in_batch=1).loss.item()  # a sum over label tokens
        num_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss = loss_sum / max(1, num_tokens)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": num_tokens}


def generation_scores(model, tokenizer, prompt_ids: List[List[int]], references: List[str],
                      max_new_tokens: int, batch_size: int) -> tuple:
    token_ids = greedy_token_ids(model, tokenizer, prompt_ids, max_new_tokens, batch_size)
    predictions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids]
    scores = {"exact_match": sum(map(exact_match, predictions, references)) / len(references),
              "rouge_l": sum(map(rouge_l, predictions, references)) / len(references)}
    return scores, predictions


def measure(model, tokenizer, rows, answered, args, device) -> tuple:
    """(metrics, predictions for the `answered` rows: those with a prompt and reference answer)."""
    results = loss_and_perplexity(model, rows, tokenizer.pad_token_id, args.batch_size, device)
    predictions = []
    if len(answered):
        scores, predictions = generation_scores(model, tokenizer, list(answered["prompt_ids"]),
                                                list(answered["reference"]), args.max_new_tokens, args.batch_size)
        results.update(scores)
    return results, predictions


def base_model_of(trained, source, device):
    """The model the run started from, and a context to measure it in: LoRA's adapters switched off, or
    for full fine-tuning the base weights loaded beside the trained model."""
    import contextlib
    from ..finished_run import base_model_source
    from ..trainer.model import load_base_model
    if hasattr(trained, "disable_adapter"):
        return trained, trained.disable_adapter()
    base = load_base_model(source.config, base_model_source(source), torch.device("cpu"), torch.float32)
    return base.to(device).eval(), contextlib.nullcontext()


def evaluate_run(args) -> tuple:
    """(results, the run's config)."""
    from ..finished_run import build_trained_model, load_tokenizer, resolve_source
    source = resolve_source(args.run_dir, args.checkpoint)
    cfg = source.config
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = load_tokenizer(source)
    prepared, _, _ = load_or_build(cfg.data, tokenizer, cfg.train.seq_len, cfg.train.seed)
    rows = prepared.split(args.split)
    if args.max_examples:
        rows = rows.select(range(min(args.max_examples, len(rows))))
    if len(rows) == 0:
        raise DataError(f"data.test_fraction: the {args.split} split of {args.run_dir} is empty (the run held out no "
                        f"{args.split} rows and the dataset has none of its own); try --split validation")
    answered = rows.filter(lambda row: bool(row["prompt_ids"])) if "prompt_ids" in rows.column_names else rows.select([])
    started = time.time()
    model = build_trained_model(source, device)
    results = {"run_dir": str(Path(args.run_dir).resolve()), "checkpoint": args.checkpoint or "final",
               "split": args.split, "num_examples": len(rows), "num_generated": len(answered),
               "max_new_tokens": args.max_new_tokens}
    results["model"], predictions = measure(model, tokenizer, rows, answered, args, device)
    base_predictions = []
    if args.compare_base:
        base, context = base_model_of(model, source, device)
        with context:
            results["base"], base_predictions = measure(base, tokenizer, rows, answered, args, device)
    results["samples"] = [
        {"prompt": tokenizer.decode(answered[i]["prompt_ids"]), "reference": answered[i]["reference"],
         "prediction": predictions[i], **({"base_prediction": base_predictions[i]} if base_predictions else {})}
        for i in range(min(NUM_SAMPLES_SAVED, len(predictions)))]
    results["wall_time_s"] = round(time.time() - started, 2)
    return results, cfg


def results_path(run_dir, checkpoint: Optional[str]) -> Path:
    name = EVAL_FILE if checkpoint is None else f"eval-{Path(checkpoint).name}.json"
    return Path(run_dir) / name


def print_results(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"{results['checkpoint']}, {results['split']} split ({results['num_examples']} rows)")
    columns = ["base", "model"] if "base" in results else ["model"]
    table.add_column("metric")
    for column in columns:
        table.add_column("fine-tuned" if column == "model" else "base", justify="right")
    for metric in ("loss", "perplexity", "exact_match", "rouge_l"):
        if metric in results["model"]:
            table.add_row(metric, *(f"{results[column][metric]:.4g}" for column in columns))
    Console().print(table)


def log_to_wandb(results: dict, cfg, run_dir: Path) -> None:
    """Add the results to the run's own W&B run (same id) as eval/* summary values and a samples table."""
    import wandb
    from ..trainer.wandb_run import open_wandb_run
    run = open_wandb_run(OmegaConf.merge(cfg, {"output_dir": str(run_dir)}), resumed=True)
    prefix = "eval" if results["checkpoint"] == "final" else f"eval/{results['checkpoint']}"
    for column in ("model", "base"):
        for metric, value in results.get(column, {}).items():
            run.summary[f"{prefix}/{column}/{metric}"] = value
    if results["samples"]:
        keys = list(results["samples"][0])
        run.log({f"{prefix}/samples": wandb.Table(columns=keys, data=[[s[k] for k in keys] for s in results["samples"]])})
    run.finish()
    wandb.teardown()  # flushes an offline run before the command returns


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shardtune eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--checkpoint", help="step-N or a checkpoint directory; default: the run's final/")
    parser.add_argument("--split", default="test", choices=("test", "validation", "train"))
    parser.add_argument("--max-new-tokens", type=int, default=64, help="greedy generation length limit")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-examples", type=int, default=None, help="evaluate the first N rows only")
    parser.add_argument("--compare-base", action="store_true", help="also measure the model the run started from")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser.parse_args(argv)


def eval_command(argv: List[str]) -> None:
    from ..finished_run import RunDirError
    from ..quiet import quiet_libraries
    args = parse_args(argv)
    quiet_libraries()
    try:
        results, cfg = evaluate_run(args)
    except (RunDirError, DataError) as error:
        raise SystemExit(f"shardtune: {error}") from None
    path = results_path(args.run_dir, args.checkpoint)
    write_json_atomic(path, results)  # an earlier eval.json is replaced whole or not at all
    print_results(results)
    if cfg.logger.name == "wandb":
        log_to_wandb(results, cfg, Path(args.run_dir))
    print(f"results: {path}")
