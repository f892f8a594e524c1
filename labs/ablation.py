"""The paper's Table 1 on the built-in synthetic sets, with the controls that say what the attention
does: the plain baseline (none), PHA+RHP with the learned T (the paper), the raw map instead of T
(the authors' unpaired code), a flat weight of 0.5 with no map at all (the same input gain, x' = 1.5 x),
and the other attention x concatenation pairs, for both training scripts, over several seeds.

    python labs/ablation.py                          # the grid in the README (seeds 0 1 2)
    python labs/ablation.py --seeds 0 --epochs 1     # a quick look
    python labs/ablation.py --report                 # only rewrite the table from labs/ablation.json

Each run is an ordinary run folder runs/lab_SCRIPT_ATTENTION_CONCAT_TRANSFER_sSEED_eEPOCHS made by the
training script with its synthetic preset (the unpaired one at the default run's 6 + 6 epochs). The
baseline, PHA+RHP and its two controls run first at every seed, then the other pairs. Every finished
run is added to labs/ablation.json at once and never rerun; a run folder with only a checkpoint is
resumed: an interrupted grid continues where it stopped, also from another clone of the repository.
The table (mean +- std over seeds, with the number of seeds where fewer than asked) goes to labs/ablation.md.
Scores: unpaired, mean L1 to the true translation (lower is better), overall and inside / outside the
object; supervised label -> photo, L1 (lower is better) and PSNR in dB (higher is better). w_range is the
mean within-image range of the weight map G got (losses.csv), in epoch 2 (the first visits that read a
stored map) and in the last epoch: how much of D's map reached the generator.
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "ablation.json"
DEFAULT_EPOCHS = {"unpaired": 6, "supervised": 4}  # epochs at the full rate, and as many of decay (the presets)
CONFIGS = [  # (attention, concat, transfer), in the order they run within a seed
    ("none", "rhp", "learned"), ("pha", "rhp", "learned"), ("pha", "rhp", "raw"), ("pha", "rhp", "flat"),
    ("pha", "alpha", "learned"), ("tam", "rhp", "learned"), ("tam", "alpha", "learned")]
COLUMNS = {
    "unpaired": [("AtoB", "l1_truth", "A->B L1"), ("BtoA", "l1_truth", "B->A L1"),
                 ("AtoB", "l1_truth_object", "A->B object"), ("AtoB", "l1_truth_background", "A->B background"),
                 ("BtoA", "l1_truth_object", "B->A object"), ("BtoA", "l1_truth_background", "B->A background")],
    "supervised": [("AtoB", "l1", "label->photo L1"), ("AtoB", "psnr", "label->photo PSNR")],
}


def label(attention, concat, transfer):
    if attention == "none":
        return "none (baseline)"
    extra = {"learned": "", "raw": " raw map (no T)", "flat": " flat 0.5 (no map)"}[transfer]
    return f"{attention}+{concat}{extra}"


def key(attention, concat, transfer):
    """The short name of a configuration on the command line: none, pha+rhp, pha+rhp+raw, ..."""
    return "none" if attention == "none" else f"{attention}+{concat}" + ("" if transfer == "learned" else f"+{transfer}")


def w_range_by_epoch(csv_path, epochs):
    """Mean w_range of epoch 2 and of the last epoch from a finished run's losses.csv."""
    with open(csv_path) as f:
        values = [float(row["w_range"]) for row in csv.DictReader(f)]
    per_epoch = len(values) // (2 * epochs)
    return {"epoch_2": statistics.fmean(values[per_epoch:2 * per_epoch]),
            "last_epoch": statistics.fmean(values[-per_epoch:])}


def run_one(script, attention, concat, transfer, seed, epochs, results):
    name = f"lab_{script}_{attention}_{concat}_{transfer}_s{seed}_e{epochs}"
    if name in results:
        return
    run = REPO / "runs" / name
    t = time.time()
    if not (run / "metrics.json").exists():
        cmd = [sys.executable, str(REPO / f"train_{script}.py"), "--attention", attention, "--concat", concat,
               "--transfer", transfer, "--seed", str(seed), "--name", name, "--sample-every", "100000",
               "--epochs", str(epochs), "--epochs-decay", str(epochs), "--snapshot-every", "0"]
        if (run / "checkpoint.pt").exists():
            cmd.append("--resume")
        run.mkdir(parents=True, exist_ok=True)
        with open(run.parent / f"{name}.log", "a") as log:  # the progress bar and any error, kept out of the table
            subprocess.run(cmd, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    results[name] = {"script": script, "attention": attention, "concat": concat, "transfer": transfer,
                     "seed": seed, "epochs": epochs, "seconds": round(time.time() - t),
                     "metrics": json.loads((run / "metrics.json").read_text()),
                     "w_range": w_range_by_epoch(run / "losses.csv", epochs)}
    RESULTS.write_text(json.dumps({"runs": results}, indent=1) + "\n")  # after every run: nothing is lost
    print(f"{name}: {results[name]['seconds']} s", flush=True)


def cell(values, n_asked):
    if not values:
        return "-"
    mean = statistics.fmean(values)
    text = f"{mean:.3f} +- {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"
    return text + (f" (n={len(values)})" if len(values) < n_asked else "")


def report(results, seeds, epochs, scripts):
    lines = [f"Seeds {seeds}; epochs (full rate + decay): "
             + ", ".join(f"{s} {epochs[s]} + {epochs[s]}" for s in scripts)
             + "; synthetic presets otherwise; mean +- std over seeds (n = seeds done, where fewer)."]
    for script in scripts:
        cols = COLUMNS[script]
        lines += ["", f"**{script}**", "",
                  "| configuration | " + " | ".join(c[2] for c in cols) + " | w_range epoch 2 | w_range last epoch |",
                  "|---" * (len(cols) + 3) + "|"]
        for attention, concat, transfer in CONFIGS:
            runs = [r for r in results.values() if (r["script"], r["attention"], r["concat"], r["transfer"],
                                                    r["epochs"]) == (script, attention, concat, transfer,
                                                                     epochs[script]) and r["seed"] in seeds]
            cells = [cell([r["metrics"][d][k] for r in runs], len(seeds)) for d, k, _ in cols]
            cells += [cell([r["w_range"][k] for r in runs], len(seeds)) for k in ("epoch_2", "last_epoch")]
            lines.append(f"| {label(attention, concat, transfer)} | " + " | ".join(cells) + " |")
        first = next((r for r in results.values() if r["script"] == script), None)
        if script == "unpaired" and first:  # the untranslated input, for scale
            cells = [f"{first['metrics'][d][k.replace('truth', 'input')]:.3f}" for d, k, _ in cols]
            lines.append("| (input, untranslated) | " + " | ".join(cells) + " | | |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, help=f"epochs at the full rate and of decay (default: {DEFAULT_EPOCHS})")
    p.add_argument("--scripts", nargs="+", default=["unpaired", "supervised"], choices=["unpaired", "supervised"])
    p.add_argument("--configs", nargs="+", choices=[key(*c) for c in CONFIGS],
                   help="run only these rows of the table (all by default), e.g. to share a grid between machines")
    p.add_argument("--report", action="store_true", help="write the table from labs/ablation.json, run nothing")
    args = p.parse_args()
    epochs = {s: args.epochs or DEFAULT_EPOCHS[s] for s in args.scripts}
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "runs" not in results:  # a file of the earlier format holds nothing this grid can reuse
        results = {"runs": {}}
    start = time.time()
    if not args.report:
        # the baseline, the paper's default and its two controls at every seed first, then the other pairs
        chosen = [c for c in CONFIGS if not args.configs or key(*c) in args.configs]
        for configs in ([c for c in chosen if c in CONFIGS[:4]], [c for c in chosen if c not in CONFIGS[:4]]):
            for seed in args.seeds:
                for attention, concat, transfer in configs:
                    for script in args.scripts:
                        run_one(script, attention, concat, transfer, seed, epochs[script], results["runs"])
    lines = report(results["runs"], args.seeds, epochs, args.scripts)
    (RESULTS.parent / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"grid time this call: {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
