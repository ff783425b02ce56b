"""Where a launcher runs: inside a Slurm job step (`srun --ntasks-per-node=1 shardtune train ...` in an
allocation), the node count, this node's rank and the rendezvous address come from Slurm's environment,
so the same command line serves every node."""
import logging
import os
import subprocess
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError

log = logging.getLogger("shardtune")


@dataclass
class SlurmStep:
    job_id: str
    num_nodes: int
    num_tasks: int
    node_rank: int
    first_node: str


def slurm_step(environ=os.environ) -> Optional[SlurmStep]:
    """The srun step this process is a task of; None outside one (a batch script alone is not a step: it
    runs on the first node only)."""
    if "SLURM_STEP_ID" not in environ or "SLURM_JOB_ID" not in environ:
        return None
    num_nodes = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES", "1"))
    num_tasks = int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS", "1"))
    node_list = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
    return SlurmStep(environ["SLURM_JOB_ID"], num_nodes, num_tasks, int(environ.get("SLURM_NODEID", "0")),
                     first_node(node_list))


def first_node(node_list: str) -> str:
    """The first host of a Slurm node list such as n[1-2],gpu07 (scontrol expands the ranges)."""
    names = subprocess.run(["scontrol", "show", "hostnames", node_list], capture_output=True, text=True,
                           check=True).stdout.split()
    return names[0]


def node_address(node: str) -> str:
    """The node's address as Slurm knows it (NodeAddr): node names need not resolve."""
    text = subprocess.run(["scontrol", "show", "node", "--oneliner", node], capture_output=True, text=True,
                          check=True).stdout
    fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
    return fields.get("NodeAddr") or node


def apply_slurm_step(launcher, rdzv_port: int, step: Optional[SlurmStep]) -> None:
    """Fill the multi-node launcher fields from a Slurm step with one task per node. Settings the user gave
    (launcher.nnodes other than 1, launcher.rdzv_endpoint) win."""
    if step is None or step.num_nodes == 1 or launcher.nnodes != 1 or launcher.rdzv_endpoint:
        return
    if step.num_tasks != step.num_nodes:
        raise ConfigError("launcher.nnodes", f"this Slurm step runs {step.num_tasks} tasks on {step.num_nodes} nodes; "
                                             "shardtune starts one torchrun per node: use srun --ntasks-per-node=1")
    launcher.nnodes = step.num_nodes
    launcher.node_rank = step.node_rank
    launcher.rdzv_endpoint = f"{node_address(step.first_node)}:{rdzv_port}"
    launcher.rdzv_id = launcher.rdzv_id or f"slurm-{step.job_id}"
    log.info("Slurm step of job %s: node %d of %d, rendezvous at %s (%s)", step.job_id, step.node_rank,
             step.num_nodes, launcher.rdzv_endpoint, step.first_node)
