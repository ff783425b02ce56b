#!/usr/bin/env bash
# Install, configure and start a real single-host Slurm with two compute nodes, n1 and n2, for the
# cluster tests and CI. Idempotent: a second call finds everything running and only checks it.
#
# Debian's slurm-wlm runs several slurmd on one host when each node has its own Port=; both nodes
# have NodeAddr=127.0.0.1, so a 2-node allocation (and `srun -N2 torchrun --rdzv-backend=c10d`) is
# real, on loopback only. No accounting (slurmdbd): the sbatch backend does not need it.
#
# Needs root. Usage: scripts/local_slurm.sh [start|stop|status]   (default: start)
# Exit code 3: this machine already has a Slurm configuration of its own, which the script leaves alone.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurm-shardtune
LOG_DIR=/var/log/slurm-shardtune
NODES=(n1 n2)
CPUS_PER_NODE=${SHARDTUNE_SLURM_CPUS:-4}

installed() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; }

install_packages() {
    installed && return
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

MARK="# Written by shardtune's scripts/local_slurm.sh"

write_config() {
    if [ -e "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
        echo "local_slurm.sh: $CONF_DIR/slurm.conf belongs to another Slurm set-up; not overwriting it" >&2
        exit 3
    fi
    mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$LOG_DIR"
    for node in "${NODES[@]}"; do mkdir -p "$STATE_DIR/$node"; done
    local port=17001 node_lines=""
    for node in "${NODES[@]}"; do
        node_lines+="NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$(hostname) Port=$port CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN"$'\n'
        port=$((port + 1))
    done
    cat > "$CONF_DIR/slurm.conf" <<EOF
$MARK: one host, two slurmd (n1, n2) on loopback.
ClusterName=shardtune-local
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again, so that the credentials revoked for
# its first run have expired on the nodes (the default, 120 s, makes the requeue test slow; starting the
# job earlier by hand fails with "Job credential revoked").
AuthInfo=cred_expire=10
CryptoType=crypto/munge
MpiDefault=none
# No cgroups in a container: track processes by their parent, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The node lines below, not the hardware, say how many CPUs each node has (two nodes share this host).
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/%n
SlurmctldPidFile=/run/slurmctld-shardtune.pid
SlurmdPidFile=/run/slurmd-shardtune-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldPort=6817
# Quick turnaround for tests: short waits between SIGTERM and SIGKILL, finished jobs kept 10 min.
KillWait=10
MinJobAge=600
SchedulerParameters=sched_interval=2
$node_lines
PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    if ! munge -n >/dev/null 2>&1; then
        runuser -u munge -- munged --force 2>/dev/null || munged --force
    fi
    munge -n | unmunge >/dev/null
}

# Daemons are found and stopped by the pid files slurm.conf names, never by process name.
CTLD_PID=/run/slurmctld-shardtune.pid
slurmd_pid() { echo "/run/slurmd-shardtune-$1.pid"; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_daemons() {
    running "$CTLD_PID" || slurmctld
    for node in "${NODES[@]}"; do
        running "$(slurmd_pid "$node")" || slurmd -N "$node"
    done
}

wait_until_idle() {
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        local idle
        idle=$(sinfo -h -N -o "%N %t" 2>/dev/null | awk '$2 == "idle" || $2 == "mix" || $2 == "alloc"' | wc -l)
        if [ "$idle" -ge "${#NODES[@]}" ]; then
            sinfo -N
            return 0
        fi
        # Nodes marked down by an earlier, stopped run come back once their slurmd answers.
        scontrol update nodename="$(IFS=,; echo "${NODES[*]}")" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    echo "local_slurm.sh: nodes did not become idle within 60 s:" >&2
    sinfo -N >&2 || true
    tail -n 20 "$LOG_DIR"/*.log >&2 || true
    return 1
}

stop_daemons() {
    for pid_file in "$CTLD_PID" $(for node in "${NODES[@]}"; do slurmd_pid "$node"; done); do
        running "$pid_file" && kill "$(cat "$pid_file")"
    done
    return 0
}

case "${1:-start}" in
    start)
        [ "$(id -u)" = 0 ] || { echo "local_slurm.sh: needs root" >&2; exit 2; }
        install_packages
        write_config
        start_munge
        start_daemons
        wait_until_idle
        ;;
    stop) stop_daemons ;;
    status) sinfo -N ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
