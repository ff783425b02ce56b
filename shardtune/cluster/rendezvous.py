"""Multi-node rendezvous: the arguments torchrun's c10d rendezvous needs, the network-interface settings
the workers get, and the pre-flight check that a node can reach the rendezvous endpoint at all.

torchrun does the rendezvous itself; this module only chooses its arguments. Without the pre-flight check
a node that cannot reach node 0 (a wrong address, a firewall, an interface the others cannot route to)
waits silently until torchrun's join timeout, ten minutes by default.
"""
import hashlib
import math
import os
import socket
import time
from pathlib import Path
from typing import Tuple

from ..errors import ConfigError

C10D_DEFAULT_PORT = 29400  # torchrun's own default for --rdzv-endpoint without a port
STATIC_DEFAULT_PORT = 29500


def split_endpoint(endpoint: str, default_port: int = C10D_DEFAULT_PORT) -> Tuple[str, int]:
    """'host:port' (or 'host', or '[v6addr]:port') -> (host, port)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or host.endswith(":") or (endpoint.startswith("[") and not host.endswith("]")):
        host, port = endpoint, ""  # no port given (a bare IPv6 address has colons of its own)
    host = host.strip("[]")
    if not host:
        raise ConfigError("launcher.rdzv_endpoint", f"expected host:port, got {endpoint!r}")
    if port and not port.isdigit():
        raise ConfigError("launcher.rdzv_endpoint", f"port must be a number, got {endpoint!r}")
    return host, int(port) if port else default_port


def rendezvous_id(launcher, output_dir) -> str:
    """The id every node of one run shares: the user's, else the Slurm job's, else one derived from the run
    directory (which every node must name alike anyway)."""
    if launcher.rdzv_id:
        return launcher.rdzv_id
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    return "shardtune-" + hashlib.sha256(str(Path(output_dir).absolute()).encode()).hexdigest()[:12]


def c10d_arguments(nnodes: int, min_nodes, endpoint: str, rdzv_id: str, is_host: str, join_timeout_s: int) -> list:
    """torchrun's c10d rendezvous flags. `is_host` ('true'/'false', or a shell expression in a batch script)
    says whether this node hosts the rendezvous store: torchrun's own guess compares host names and
    addresses, which fails where several nodes share an address (one host) or names do not resolve."""
    nodes = f"{min_nodes}:{nnodes}" if min_nodes and min_nodes != nnodes else str(nnodes)
    return [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id}",
            f"--rdzv-conf=is_host={is_host},join_timeout={join_timeout_s}"]


def socket_environment(launcher) -> dict:
    """Environment for the workers: which interface NCCL and gloo use. gloo otherwise binds the address the
    host name resolves to (often 127.0.0.1), which the other nodes cannot reach."""
    if not launcher.socket_ifname:
        return {}
    return {"NCCL_SOCKET_IFNAME": launcher.socket_ifname, "GLOO_SOCKET_IFNAME": launcher.socket_ifname}


def agent_environment(cfg) -> dict:
    """Environment for torchrun's agent. It forwards a SIGTERM it receives to the workers and waits
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds before it kills them: the workers' grace period to save a checkpoint
    (train.grace_period_s), and a little more for them to report that they did.

    Where it may restart the workers (launcher.max_restarts): the rendezvous store the agent shares with the workers
    keeps the failed group's addresses, which the restarted group can read instead of its own and fail to connect
    (pytorch/pytorch#135712; seen here with gloo: "connectFullMesh failed ... Connection refused"). Without the
    sharing, rank 0 of each attempt hosts a fresh store."""
    environment = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(math.ceil(cfg.train.grace_period_s) + 5)}
    if cfg.launcher.max_restarts:
        environment["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return environment


# glibc serves large allocations from mmap and returns them to the system when freed, until the first such free
# raises its threshold (up to 32 MiB); after that, freed layer-sized buffers (FSDP's gathered layers on a CPU,
# offloaded gradients) stay in the heap, and a worker's resident memory grows by about a model's worth. A fixed
# threshold keeps them returned.
# torch's CUDA allocator with expandable segments grows a few large segments instead of allocating (and, with FSDP2's
# gathers and reductions on their own streams, waiting on) many block-sized ones: 1B full fine-tune on one H100, 47.5k
# against 44.8k tokens/s in the same device call (docs/benchmarks.md); torchtitan sets it too.
# Each is set where the user has not set it.
ALLOCATOR_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(1024 * 1024),
                         "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def apply_allocator_environment() -> None:
    """ALLOCATOR_ENVIRONMENT's settings in a process that did not start with them (a fork): glibc reads the
    variables only when a process starts; mallopt sets the same. Nothing where the C library is not glibc."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, int(os.environ.get("MALLOC_MMAP_THRESHOLD_", ALLOCATOR_ENVIRONMENT["MALLOC_MMAP_THRESHOLD_"])))


def hosts_rendezvous(launcher) -> bool:
    """Node 0 hosts the rendezvous store (c10d) or the static master; it has nothing to connect to yet."""
    return launcher.node_rank == 0


def rendezvous_address(launcher) -> Tuple[str, int, str]:
    """(host, port, the key that names them) of the endpoint this node's torchrun will connect to."""
    if launcher.rdzv_endpoint:
        return (*split_endpoint(launcher.rdzv_endpoint), "launcher.rdzv_endpoint")
    return launcher.master_addr, launcher.master_port or STATIC_DEFAULT_PORT, "launcher.master_addr"


def check_rendezvous_reachable(launcher, log=None) -> None:
    """Multi-node, not node 0: wait until the rendezvous endpoint accepts a TCP connection. Raises ConfigError
    naming the key when the name does not resolve, when nothing answers at all within
    launcher.rdzv_check_timeout_s (wrong address, firewall, no route), or when the host answers but nothing
    listens within launcher.rdzv_timeout_s (node 0 never started: torchrun would have given up then too).
    """
    if launcher.nnodes == 1 or hosts_rendezvous(launcher) or launcher.rdzv_check_timeout_s <= 0:
        return
    host, port, key = rendezvous_address(launcher)
    try:
        socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise ConfigError(key, f"rendezvous host {host!r} does not resolve from this node ({error.strerror}); "
                               "give node 0's IP address") from error
    started = time.monotonic()
    unreachable_deadline = started + launcher.rdzv_check_timeout_s
    # A refused connection proves the path works: node 0 is up but still preparing, so wait as long as
    # torchrun itself would.
    refused_deadline = started + max(launcher.rdzv_check_timeout_s, launcher.rdzv_timeout_s)
    told = False
    while True:
        deadline = refused_deadline if told else unreachable_deadline
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except ConnectionRefusedError:
            if not told and log is not None:
                log.info("rendezvous %s:%d: node 0 is reachable but not listening yet; waiting", host, port)
            told = True
            if time.monotonic() >= refused_deadline:
                raise ConfigError(key, f"nothing listens at the rendezvous endpoint {host}:{port} after "
                                       f"{refused_deadline - started:g} s: has node 0 started with the same endpoint "
                                       "and port?") from None
        except OSError as error:
            if time.monotonic() >= deadline:
                reason = error.strerror or str(error) or type(error).__name__
                raise ConfigError(key, f"rendezvous endpoint {host}:{port} is not reachable from this node within "
                                       f"{launcher.rdzv_check_timeout_s:g} s ({reason}). Check the address, that the "
                                       "port is open between the nodes, and launcher.socket_ifname; "
                                       "launcher.rdzv_check_timeout_s sets how long to wait") from None
        time.sleep(0.2)  # polling a port that is not open yet, with a deadline
