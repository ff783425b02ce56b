"""Where a profiled step leaves the GPU idle: read a Chrome trace written by train.profile_steps
(<output_dir>/profile/rank0.json) and print how busy the GPU was, the CUDA runtime calls that took the most host
time, the idle time by the size of its gaps and by what the host was doing (backward on autograd's thread, or
forward and the rest), and the largest gaps between kernels with the host operators that ran during each.

    python3 benchmarks/trace_gaps.py /tmp/bench/1b-full-fsdp-x1/profile/rank0.json [--gaps 10]
"""
import argparse
import collections
import json

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
# Gap sizes (microseconds): launch latency between queued kernels, short host stalls, long ones.
SIZES = ((20, "under 20 us"), (200, "20-200 us"), (1000, "0.2-1 ms"), (float("inf"), "over 1 ms"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--gaps", type=int, default=10, help="how many of the largest gaps to list")
    args = parser.parse_args()
    events = [e for e in json.load(open(args.trace))["traceEvents"] if e.get("ph") == "X"]
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATEGORIES), key=lambda e: e["ts"])
    host = [e for e in events if e.get("cat") not in GPU_CATEGORIES]

    gaps, busy, end = [], 0.0, gpu[0]["ts"]
    for event in gpu:
        if event["ts"] > end:
            gaps.append((end, event["ts"]))
        busy += max(0.0, event["ts"] + event["dur"] - max(event["ts"], end))
        end = max(end, event["ts"] + event["dur"])
    window = end - gpu[0]["ts"]
    print(f"GPU window {window / 1e3:.1f} ms, kernels and copies busy {busy / 1e3:.1f} ms ({busy / window:.0%}); "
          f"{len([g for g in gaps if g[1] - g[0] > 200])} gaps over 0.2 ms")

    idle_by_size, idle_by_phase = collections.Counter(), collections.Counter()
    backward = [(e["ts"], e["ts"] + e["dur"]) for e in host if e["name"].startswith("autograd::engine::evaluate")]
    for start, stop in gaps:
        length = stop - start
        size = next(label for limit, label in SIZES if length < limit)
        idle_by_size[size] += length
        in_backward = any(b_start < stop and b_stop > start for b_start, b_stop in backward)
        idle_by_phase["backward" if in_backward else "forward and the rest"] += length
    print("  idle by gap size: " + ", ".join(f"{label} {idle_by_size[label] / 1e3:.1f} ms" for _, label in SIZES))
    print("  idle by phase: " + ", ".join(f"{phase} {us / 1e3:.1f} ms" for phase, us in idle_by_phase.items()))

    runtime = collections.Counter()
    calls = collections.Counter()
    for event in host:
        if event.get("cat") in ("cuda_runtime", "cuda_driver"):
            runtime[event["name"]] += event["dur"]
            calls[event["name"]] += 1
    for name, microseconds in runtime.most_common(8):
        print(f"  {name}: {microseconds / 1e3:.1f} ms of host time in {calls[name]} calls")

    for start, stop in sorted(gaps, key=lambda g: g[0] - g[1])[:args.gaps]:
        inside = collections.Counter(e["name"][:70] for e in host
                                     if e["ts"] < stop and e["ts"] + e["dur"] > start and e.get("cat") == "cpu_op")
        print(f"gap {(stop - start) / 1e3:.2f} ms at +{(start - gpu[0]['ts']) / 1e3:.1f} ms: "
              f"{', '.join(f'{name} x{n}' for name, n in inside.most_common(5)) or 'no operator (Python)'}")


if __name__ == "__main__":
    main()
