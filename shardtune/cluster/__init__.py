"""Clusters: everything that differs when a run spans several nodes.

rendezvous.py   torchrun's c10d rendezvous arguments, NCCL/gloo interface, the pre-flight reachability check
environment.py  inside an srun step: nodes, rank and rendezvous from Slurm's environment
slurm.py        the Slurm backend: the sbatch script (one srun task per node running torchrun), submission
commands.py     `shardtune status` / `shardtune cancel` for a run's Slurm job
shared_fs.py    one writer per file per filesystem (data cache, random init)
templates/      an sbatch example and a documented multi-node torchrun script
"""
