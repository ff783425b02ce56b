"""The W&B run of a run directory: opened by rank 0's metrics logger, and again by `shardtune eval` to add its
results to the same run (same id)."""
import os
import uuid
from pathlib import Path

from omegaconf import OmegaConf

from ..run_dir import WANDB_RUN_ID_FILE


def _wandb_run_id(id_path: Path, resumed: bool) -> str:
    """The W&B run id of this output_dir: reused on resume so W&B continues the same run."""
    if resumed and id_path.exists():
        return id_path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    id_path.write_text(run_id + "\n")
    return run_id


def open_wandb_run(cfg, resumed: bool):
    """The run's W&B run: a new one, or (resumed) the one this run directory started, continued."""
    # Imported here: only the writing rank of a W&B run pays for the import, and the GPU machine
    # only has wandb when it was packed along.
    import wandb

    output_dir = Path(cfg.output_dir)
    return wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=cfg.logger.run_name or output_dir.resolve().name,
        dir=str(output_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
        mode=cfg.logger.mode or os.environ.get("WANDB_MODE") or "online",
        tags=list(cfg.logger.tags),
        group=cfg.logger.group,
        id=_wandb_run_id(output_dir / WANDB_RUN_ID_FILE, resumed),
        # W&B keeps a resumed run's history from before; steps logged again (past the checkpoint)
        # are dropped by W&B with a warning. metrics.jsonl is the exact record.
        resume="allow",
    )
