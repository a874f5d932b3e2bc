#!/usr/bin/env python3
"""The B-cosification ablation: examples/bcosify_resnet over a grid of recipe settings x training
budgets, and the same-shaped B-cos model trained from scratch at the same budgets. Each run
writes its own report.json (top-1 on the test set, GridPG, completeness); this script runs what
is missing, one run at a time (each already uses every core), and writes a markdown table.

  tools/bcosify_ablation.py                          # ResNet-20, the whole grid (hours on 2 cores)
  tools/bcosify_ablation.py --settings default,scratch --budgets 1 --limit-train 12800
  tools/bcosify_ablation.py --arch resnet56 --settings default,scratch --budgets 1,2
  tools/bcosify_ablation.py --table                  # only (re)write the table from finished runs
  tools/bcosify_ablation.py --list                   # the settings and their flags

Runs land in OUT/<arch>/<setting>/e<budget>/ (OUT: out/ablation); a run whose report.json exists
is not repeated, so an interrupted grid resumes where it stopped. The table goes to
OUT/<arch>/table.md and table.json. Needs only the Python standard library.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (flags for bcosify_resnet, what it is). bcosify_resnet's defaults are the recipe this
# grid chose ("default"); every other row changes one thing, or restores the paper's recipe.
SETTINGS = {
    "paper": (["--lr", "1e-4", "--bias-decay", "0", "--b-warmup", "0"],
              "the paper's CNN recipe: biases removed at conversion, b = 2 at once, lr 1e-4"),
    "remove-lr2e-3": (["--bias-decay", "0", "--b-warmup", "0"],
                      "biases removed at conversion, b = 2 at once, lr 2e-3"),
    "decay": (["--b-warmup", "0"], "bias decay over 30 % of the steps, b = 2 at once"),
    "bwarmup": (["--bias-decay", "0"], "biases removed at conversion, b warm-up over 25 %"),
    "default": ([], "bias decay over 30 % + b warm-up over 25 %, lr 2e-3 (the new defaults)"),
    "default-lr1e-3": (["--lr", "1e-3"], "default, lr 1e-3"),
    "default-lr4e-3": (["--lr", "4e-3"], "default, lr 4e-3"),
    "default-decay0.6": (["--bias-decay", "0.6"], "default, bias decay over 60 % of the steps"),
    "default-head0": (["--head-bias-decay", "0"], "default, but the head's bias removed at conversion"),
    "default-recal": (["--bn-recalibrate", "50"], "default, BN statistics recalibrated on 50 batches first"),
    "default-ce": (["--loss", "ce"], "default, cross-entropy instead of the B-cos BCE"),
    "keep-bias": (["--keep-bias", "--bias-decay", "0"],
                  "biases kept for good (not a B-cos model: explanations incomplete)"),
    "scratch": (["--from-scratch", "--lr", "3e-3", "--bias-decay", "0", "--b-warmup", "0"],
                "B-cos model of the same shape trained from random weights, lr 3e-3"),
    "scratch-lr1e-3": (["--from-scratch", "--lr", "1e-3", "--bias-decay", "0", "--b-warmup", "0"],
                       "from scratch, lr 1e-3"),
}
DEFAULT_SETTINGS = ["paper", "default", "scratch"]
DEFAULT_BUDGETS = [0.25, 0.5, 1, 2, 5]


def budget_name(b):
    return "e" + ("%g" % b)


def run_dir(out, arch, setting, budget):
    return os.path.join(out, arch, setting, budget_name(budget))


def read_report(path):
    try:
        with open(os.path.join(path, "report.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_one(args, setting, budget):
    path = run_dir(args.out, args.arch, setting, budget)
    if read_report(path):
        return "done"
    os.makedirs(path, exist_ok=True)
    cmd = [args.binary, "--arch", args.arch, "--epochs", "%g" % budget, "--out", path,
           "--gridpg-grids", str(args.gridpg_grids), "--explain", str(args.explain), "--seed", str(args.seed),
           "--no-original-gridpg"] + SETTINGS[setting][0]
    if args.limit_train:
        cmd += ["--limit-train", str(args.limit_train)]
    if args.weights:
        cmd += ["--weights", args.weights]
    cmd += args.extra
    print(f"[{time.strftime('%H:%M:%S')}] {setting} @ {budget} epoch(s): {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return "dry"
    start = time.time()
    with open(os.path.join(path, "log.txt"), "w", encoding="utf-8") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    r = read_report(path)
    if rc != 0 or r is None:
        print(f"  FAILED (exit {rc}); see {path}/log.txt", flush=True)
        return "failed"
    print(f"  top-1 {r['accuracy_after']:.2f} %, GridPG {fmt(r['gridpg_after']['mean'], 3)}, "
          f"completeness {r['completeness_error']:.2g}  ({time.time() - start:.0f} s)", flush=True)
    return "ran"


def fmt(v, digits):
    return "–" if v is None else f"{v:.{digits}f}"


def write_table(args, settings, budgets):
    base = os.path.join(args.out, args.arch)
    rows, border_rows, records = [], [], []
    even = None
    for s in settings:
        cells, border_cells = [], []
        for b in budgets:
            r = read_report(run_dir(args.out, args.arch, s, b))
            if r is None:
                cells.append("")
                border_cells.append("")
                continue
            g = r["gridpg_after"]["mean"]
            border = r.get("border_share", {})
            even = border.get("even", even)
            cells.append(f"{r['accuracy_after']:.2f} / {fmt(g, 2)}")
            bs = border.get("bcos")
            border_cells.append("" if bs is None else f"{100 * bs:.1f}")
            records.append(dict(setting=s, budget=b, top1=r["accuracy_after"], gridpg=g,
                                completeness=r["completeness_error"], border_share=border.get("bcos"),
                                steps=r["steps"],
                                train_seconds=r["timings_s"].get("fine-tune"),
                                test_images=r.get("test_images"), recipe=r.get("recipe"), command=r["command"]))
        rows.append((s, cells))
        border_rows.append((s, border_cells))
    lines = [f"B-cosified {args.arch} on CIFAR-10: top-1 % on the test set / GridPG mean "
             f"({args.gridpg_grids} grids of 3 x 3), by fine-tuning budget in epochs of the training set"
             + (f" (limited to {args.limit_train} images an epoch)" if args.limit_train else ""), "",
             "| setting | " + " | ".join("%g" % b for b in budgets) + " | what |",
             "|---|" + "---|" * len(budgets) + "---|"]
    for s, cells in rows:
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {SETTINGS[s][1]} |")
    if even is not None:
        lines += ["", "Share (%) of the positive contributions within 2 px of the border (spread evenly: "
                  f"{100 * even:.1f} %), by budget", "",
                  "| setting | " + " | ".join("%g" % b for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for s, cells in border_rows:
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    done = [r for r in records if r["setting"] not in ("keep-bias",)]
    if done:
        worst = max(r["completeness"] for r in done)
        lines += ["", f"Largest completeness error over these runs (keep-bias excluded): {worst:.2g}"]
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "table.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(base, "table.json"), "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS), help="comma-separated names (see --list)")
    p.add_argument("--budgets", default=",".join("%g" % b for b in DEFAULT_BUDGETS), help="epochs, comma-separated")
    p.add_argument("--limit-train", type=int, default=0, help="training images per epoch (0: all)")
    p.add_argument("--gridpg-grids", type=int, default=250)
    p.add_argument("--explain", type=int, default=0, help="explanation PNGs per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="", help="pretrained checkpoint (default: bcosify_resnet's)")
    p.add_argument("--out", default=os.path.join(ROOT, "out", "ablation"))
    p.add_argument("--binary", default=os.path.join(ROOT, "build", "examples", "bcosify_resnet"))
    p.add_argument("--table", action="store_true", help="only write the table from finished runs")
    p.add_argument("--list", action="store_true", help="print the settings and exit")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.add_argument("extra", nargs="*", help="further bcosify_resnet flags, after --")
    args = p.parse_args()
    if args.list:
        for name, (flags, what) in SETTINGS.items():
            print(f"{name:18s} {shlex.join(flags) or '(defaults)':60s} {what}")
        return 0
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; --list shows them")
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b]
    except ValueError:
        p.error(f"--budgets: expected numbers, got {args.budgets!r}")
    if not args.table:
        if not os.access(args.binary, os.X_OK):
            p.error(f"{args.binary} is not built: ninja -C build examples/bcosify_resnet")
        failed = 0
        for b in sorted(budgets):  # the cheap budgets first: a first table comes early
            for s in settings:
                failed += run_one(args, s, b) == "failed"
        if failed:
            print(f"{failed} run(s) failed", file=sys.stderr)
    write_table(args, settings, budgets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
