"""The paper's Table 1 on the built-in synthetic sets: the plain baseline (none) against PHA+RHP,
PHA+alpha, TAM+RHP and TAM+alpha, for both training scripts, over several seeds.

    python labs/ablation.py                      # the grid in the README
    python labs/ablation.py --seeds 0 --epochs 1    # a quick look

Each run is an ordinary run folder runs/lab_SCRIPT_ATTENTION_CONCAT_sSEED made by the training script
with its synthetic preset, the unpaired one on a shorter schedule (3 + 3 epochs instead of 6 + 6). A run that already has metrics.json is reused and
one with only a checkpoint is resumed, so an interrupted grid continues where it stopped. The table
(mean +- std over seeds) goes to labs/ablation.md, the raw scores to labs/ablation.json.
Scores: unpaired, mean L1 to the true translation (lower is better), overall and on the object;
supervised label -> photo, L1 (lower is better) and PSNR in dB (higher is better).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EPOCHS = {"unpaired": 3, "supervised": 4}  # epochs at the full rate, and as many of decay
CONFIGS = [("none", "rhp"), ("pha", "rhp"), ("pha", "alpha"), ("tam", "rhp"), ("tam", "alpha")]
COLUMNS = {
    "unpaired": [("AtoB", "l1_truth", "A->B L1"), ("BtoA", "l1_truth", "B->A L1"),
                 ("AtoB", "l1_truth_object", "A->B L1 object"), ("BtoA", "l1_truth_object", "B->A L1 object")],
    "supervised": [("AtoB", "l1", "label->photo L1"), ("AtoB", "psnr", "label->photo PSNR")],
}


def run_one(script, attention, concat, seed, args):
    name = f"lab_{script}_{attention}_{concat}_s{seed}"
    run = REPO / "runs" / name
    if not (run / "metrics.json").exists():
        cmd = [sys.executable, str(REPO / f"train_{script}.py"), "--attention", attention, "--concat", concat,
               "--seed", str(seed), "--name", name, "--sample-every", "100000"]
        epochs = args.epochs or DEFAULT_EPOCHS[script]
        cmd += ["--epochs", str(epochs), "--epochs-decay", str(epochs)]
        if (run / "checkpoint.pt").exists():
            cmd.append("--resume")
        t = time.time()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        print(f"{name}: {time.time() - t:.0f} s", flush=True)
    return json.loads((run / "metrics.json").read_text())


def mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, help="epochs at the full rate and of decay, for both scripts "
                   f"(default: {DEFAULT_EPOCHS})")
    p.add_argument("--scripts", nargs="+", default=["unpaired", "supervised"], choices=["unpaired", "supervised"])
    args = p.parse_args()
    start = time.time()
    scores = {s: {f"{a}+{c}" if a != "none" else "none": [run_one(s, a, c, seed, args) for seed in args.seeds]
                  for a, c in CONFIGS} for s in args.scripts}
    minutes = (time.time() - start) / 60
    epochs = {s: args.epochs or DEFAULT_EPOCHS[s] for s in args.scripts}
    lines = [f"Seeds {args.seeds}; epochs (full rate + decay): "
             + ", ".join(f"{s} {e} + {e}" for s, e in epochs.items())
             + f"; synthetic presets otherwise; mean +- std over seeds; {minutes:.0f} min for this call."]
    for script in args.scripts:
        cols = COLUMNS[script]
        lines += ["", f"**{script}**", "", "| attention | " + " | ".join(c[2] for c in cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for config, runs in scores[script].items():
            cells = ["%.4f +- %.4f" % mean_std([r[d][k] for r in runs]) for d, k, _ in cols]
            lines.append(f"| {config} | " + " | ".join(cells) + " |")
        if script == "unpaired":  # the untranslated input, for scale
            first = scores[script]["none"][0]
            cells = [f"{first[d][k.replace('truth', 'input')]:.4f}" for d, k, _ in cols]
            lines.append("| (input, untranslated) | " + " | ".join(cells) + " |")
    out = Path(__file__).resolve().parent
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    (out / "ablation.json").write_text(json.dumps(scores, indent=1) + "\n")
    print("\n".join(lines))
    print(f"grid time this call: {minutes:.1f} min")


if __name__ == "__main__":
    main()
