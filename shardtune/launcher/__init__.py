"""The launch side: everything between the composed config and the workers.

validation.py  the cross-field rules, each error naming the key
torchrun.py    plan_launch (this machine's device, workers and precision; no side effects), the torchrun command,
               writing the run's config.yaml
memory.py      the memory estimate of `shardtune plan`: per GPU (training step, loading) and host RAM per node
fit.py         whether a run fits its GPUs and hosts: `plan`'s verdict, `train`'s refusal, what would fit instead
micro_batch.py train.micro_batch_size=auto: the largest micro batch the estimate fits (plan_launch resolves it)
launch.py      `shardtune train` and a sweep's trial: plan, tokenize the data once, write the config, then start
               torchrun or submit the Slurm job
"""
