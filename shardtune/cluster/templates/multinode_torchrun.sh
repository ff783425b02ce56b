#!/usr/bin/env bash
# Several nodes without Slurm: run this on every node, by hand or from any scheduler, with NODE_RANK set
# (0 on the node that hosts the rendezvous, 1..NNODES-1 on the others).
#
#   NODE_RANK=0 ./multinode_torchrun.sh      # on host0 (10.0.0.1)
#   NODE_RANK=1 ./multinode_torchrun.sh      # on host1
#
# What shardtune does on each node:
#   - checks the config (every node), and on nodes other than 0 waits for host0's rendezvous port to
#     answer: an address that nothing answers at stops with "launcher.rdzv_endpoint: ... is not reachable
#     from this node within 60 s" instead of hanging (launcher.rdzv_check_timeout_s);
#   - node 0 tokenizes the data into the cache (data.cache_dir) once for the whole cluster; the workers
#     on other nodes load it from there (or build it, once per node, where the cache is not shared);
#   - starts torchrun with the c10d rendezvous: node 0 hosts the rendezvous store, torchrun assigns the
#     ranks; NCCL and gloo use launcher.socket_ifname;
#   - global rank 0 writes config, metrics, checkpoint metadata, final/ and the random init, once.
#
# Every node must name the same output_dir (on a shared filesystem, or the same path on each node's disk)
# and the same rdzv_endpoint. The rendezvous id defaults to a hash of output_dir; set launcher.rdzv_id to
# run two jobs from one directory.
set -euo pipefail

NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:?set NODE_RANK: 0 on the rendezvous host, 1..NNODES-1 on the others}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-10.0.0.1:29500}   # host0's address as the other nodes reach it
IFNAME=${IFNAME:-eth0}                           # the interface the nodes reach each other on
OUTPUT_DIR=${OUTPUT_DIR:-/shared/runs/llama-lora}

shardtune train model=llama3.2-1b method=lora strategy=fsdp \
    launcher.nnodes="$NNODES" launcher.node_rank="$NODE_RANK" launcher.rdzv_endpoint="$RDZV_ENDPOINT" \
    launcher.socket_ifname="$IFNAME" output_dir="$OUTPUT_DIR" "$@"

# The torchrun line shardtune runs on node 1 (printed by `shardtune plan` with the same overrides):
#
#   python -m torch.distributed.run --nproc-per-node=8 --nnodes=2 --rdzv-backend=c10d \
#       --rdzv-endpoint=10.0.0.1:29500 --rdzv-id=shardtune-<hash of output_dir> \
#       --rdzv-conf=is_host=false,join_timeout=600 -m shardtune.trainer.worker /shared/runs/llama-lora/config.yaml
#
# with NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME set to $IFNAME. Options: launcher.min_nodes (elastic: start
# with fewer nodes), launcher.max_restarts (restart the worker group after a failure),
# launcher.rdzv_timeout_s (how long to wait for every node), launcher.local_addr (this node's address where
# host names do not resolve). A requeue or restart continues with resume=auto.
