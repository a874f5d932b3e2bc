#!/usr/bin/env python3
"""Sums a CUDA emulator trace (BCOS_CUDA_EMULATOR_TRACE=<file>) by kernel: where a GPU would wait on
one thread.

The emulator runs a launch's threads one after another and the trace gives, per launch, all threads'
running time (its work) and, averaged over its blocks, each block's longest thread (its critical path:
a GPU runs a block's threads side by side but cannot end the block before its longest thread). A
kernel whose work sits in few threads -- a serial loop over the batch inside each thread, a grid
that does not grow with the batch -- costs a CPU profile little and a GPU its whole launch. The
table ranks kernels by critical path; `parallel` (work / critical path) is how many threads' worth
of work could run side by side (an H100 keeps 132 x 2,048 threads resident). Given a second trace
of the same program at another size (`--scale`, e.g. batch 1 and batch 2), `crit x` is how each
kernel's critical path per call grew: ~2x for a per-thread loop over the batch, ~1x for a grid that
grows with it. cuBLAS calls are listed apart, by shape and math (one large TF32 product, or many
small ones?).

    BCOS_CUDA_EMULATOR_TRACE=out/b1.tsv build-emu/bench/bench_models --arch bcos_vit_b_16 \\
        --mode train --batch 1 --seconds 0 --device cuda
    tools/emu_trace.py out/b1.tsv --steps 4 [--scale out/b2.tsv] [--top 30]

Times are this host's wall-clock nanoseconds of emulated execution (a thread preempted meanwhile is
charged for it), for ranking only: not a GPU's times.
"""
import argparse
import collections
import csv
import re
import signal
import sys


def short(name):
    """The kernel's name without its template arguments and argument list."""
    return re.split(r"[<(]", name, maxsplit=1)[0].strip()


def load(path):
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        need = {"kernel", "grid", "block", "blocks", "threads", "work_ns", "max_thread_ns"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            sys.exit(f"emu_trace: {path}: not an emulator trace (expected the columns {sorted(need)})")
        for r in reader:
            if r.get("max_thread_ns") in (None, ""):  # the last line of a program that was killed
                print(f"emu_trace: {path}: line {reader.line_num} is cut short; left out", file=sys.stderr)
                continue
            rows.append(r)
    return rows


def library_calls(rows):
    """cuBLAS calls by shape ("m,n,k,batch,ops,math"): the library parallelises them itself, so
    their host time says nothing of a GPU's; their shapes and math say whether they are the GEMMs
    meant (one large product, TF32) rather than many small ones."""
    by = collections.Counter()
    for r in rows:
        if r["block"] == "-":
            by[r["kernel"] + " " + r["grid"]] += 1
    return by


def summarize(rows, full_names):
    by = collections.OrderedDict()
    for r in rows:
        if r["block"] == "-":
            continue
        key = r["kernel"] if full_names else short(r["kernel"])
        s = by.setdefault(key, {"calls": 0, "work": 0, "critical": 0, "blocks": 0, "threads": 0, "worst": 0})
        s["calls"] += 1
        s["work"] += int(r["work_ns"])
        s["critical"] += int(r.get("block_path_ns") or r["max_thread_ns"])  # older traces: the longest thread
        s["blocks"] += int(r["blocks"])
        s["threads"] += int(r["blocks"]) * int(r["threads"])
        s["worst"] = max(s["worst"], int(r["max_thread_ns"]))
    return by


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--steps", type=float, default=1, help="divide the sums by this many steps")
    ap.add_argument("--scale", help="a second trace of the same program at another size")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--full-names", action="store_true", help="one row per template instance")
    a = ap.parse_args()
    rows = load(a.trace)
    by = summarize(rows, a.full_names)
    other = summarize(load(a.scale), a.full_names) if a.scale else {}
    total_work = sum(s["work"] for s in by.values())
    total_critical = sum(s["critical"] for s in by.values())
    launches = sum(s["calls"] for s in by.values())
    print(f"{a.trace}: {launches} kernel launches ({launches / a.steps:.0f} per step), work {total_work / 1e6 / a.steps:.1f} ms, "
          f"critical paths {total_critical / 1e6 / a.steps:.2f} ms per step (emulated host time)")
    head = f"{'kernel':<40} {'calls':>7} {'work ms':>9} {'crit ms':>9} {'worst us':>9} {'blocks':>8} {'thr/call':>9} {'parallel':>9}"
    if other:
        head += f" {'crit x':>7}"
    print(head)
    ranked = sorted(by.items(), key=lambda kv: -kv[1]["critical"])
    for name, s in ranked[: a.top]:
        calls = s["calls"]
        line = (f"{name[:40]:<40} {calls / a.steps:>7.0f} {s['work'] / 1e6 / a.steps:>9.2f} {s['critical'] / 1e6 / a.steps:>9.3f} "
                f"{s['worst'] / 1e3:>9.1f} {s['blocks'] / calls:>8.0f} {s['threads'] / calls:>9.0f} "
                f"{s['work'] / max(s['critical'], 1):>9.0f}")
        if other:
            o = other.get(name)
            # Per call, so that different step counts in the two traces do not matter.
            ratio = (o["critical"] / o["calls"]) / (s["critical"] / calls) if o and s["critical"] else float("nan")
            line += f" {ratio:>7.2f}"
        print(line)
    calls = library_calls(rows)
    if calls:
        print(f"library calls ({sum(calls.values()) / a.steps:.0f} per step): calls per step, shape m,n,k,batch,ops,math")
        for shape, n in sorted(calls.items(), key=lambda kv: -kv[1])[: a.top]:
            print(f"  {n / a.steps:>7.0f}  {shape}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    main()
