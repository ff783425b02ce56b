"""What is alive at the GPU memory peak of the profiled steps: read the allocation record train.profile_steps writes
(<output_dir>/profile/rank0-memory.pickle), replay it, and print the blocks alive at the highest point grouped by the
code that allocated them. Blocks allocated before the record started (the weights, optimizer state) are not in it:
the figures are on top of those.

    python3 benchmarks/memory_peak.py /tmp/bench/8b-lora-ddp-x1/profile/rank0-memory.pickle [--top 15]
"""
import argparse
import collections
import pickle

# The frames that name who allocated: the first (innermost) one in these packages, else the innermost frame.
OWNERS = ("shardtune/", "transformers/", "peft/", "liger_kernel/", "torch/_inductor/", "torch/distributed/")


def owner(frames) -> str:
    for frame in frames:
        if any(package in frame["filename"] for package in OWNERS):
            return f"{frame['filename'].split('site-packages/')[-1]}:{frame['line']} {frame['name']}"
    return f"{frames[0]['filename']}:{frames[0]['line']} {frames[0]['name']}" if frames else "(no Python frame)"


def peak(trace):
    """(bytes at the peak, {address: allocation} alive then), replaying allocations and completed frees."""
    alive, total, best, best_alive = {}, 0, 0, {}
    for event in trace:
        if event["action"] == "alloc":
            alive[event["addr"]] = event
            total += event["size"]
            if total > best:
                best, best_alive = total, dict(alive)
        elif event["action"] == "free_completed" and event["addr"] in alive:
            total -= alive.pop(event["addr"])["size"]
    return best, best_alive


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("snapshot")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    with open(args.snapshot, "rb") as file:
        snapshot = pickle.load(file)
    for device, trace in enumerate(snapshot["device_traces"]):
        if not trace:
            continue
        best, alive = peak(trace)
        groups = collections.Counter()
        counts = collections.Counter()
        for event in alive.values():
            groups[owner(event.get("frames", []))] += event["size"]
            counts[owner(event.get("frames", []))] += 1
        print(f"device {device}: {best / 2**30:.3f} GiB alive at the peak of the record, in {len(alive)} blocks")
        for name, size in groups.most_common(args.top):
            print(f"  {size / 2**30:8.3f} GiB  {counts[name]:5d} blocks  {name}")


if __name__ == "__main__":
    main()
