"""A check of the GPU path, for the first machine with a GPU: step time and peak memory of both scripts
at the paper's size, a short training run at 256 with finite losses, and the attention bank filled on the
device against the same steps recomputed on the CPU. Prints one table.

    python labs/gpu_check.py                       # on CUDA (or MPS): the paper's size, about 5 minutes or less
    python labs/gpu_check.py --device cpu --quick  # a reduced version on the CPU (the test suite runs it)

Paper size: 256 x 256 crops of 286, ResNet-9 (unpaired) / U-Net 256 (supervised), widths 64, batch 1.
--quick: 32 x 32 crops, widths 8, 2 blocks, a few steps. Nothing is written outside a temporary folder.
"""

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import asgit  # noqa: E402
import data  # noqa: E402
import train_supervised  # noqa: E402
import train_unpaired  # noqa: E402

SCRIPTS = {"unpaired": train_unpaired, "supervised": train_supervised}


def sizes(quick):
    """The options that set the size: the paper's, or the reduced --quick ones."""
    if quick:
        return {"unpaired": ["--ngf", "8", "--ndf", "8", "--n-blocks", "2", "--load-size", "36", "--crop-size", "32"],
                "supervised": ["--ngf", "8", "--ndf", "8", "--load-size", "36", "--crop-size", "32"]}
    return {"unpaired": ["--ngf", "64", "--ndf", "64", "--n-blocks", "9", "--load-size", "286", "--crop-size", "256"],
            "supervised": ["--ngf", "64", "--ndf", "64", "--load-size", "286", "--crop-size", "256"]}


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device):
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else float("nan")


def quiet(fn, *args):
    """Run fn with its prints and progress bars swallowed; returns its result."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args)


def step_times(device, args, rows):
    """Median ms of a training step (--benchmark) and the peak memory, per script, attention, precision."""
    precisions = ["fp32", "amp"] if device.type == "cuda" else ["fp32"]
    for script, module in SCRIPTS.items():
        for attention in ("none", "pha", "tam"):
            for precision in precisions:
                argv = ["--data", "horse2zebra" if script == "unpaired" else "facades", "--attention", attention,
                        "--device", str(device), "--benchmark", str(args.timed_steps)] + sizes(args.quick)[script]
                argv += ["--amp"] if precision == "amp" else []
                peak_reset(device)
                ms = quiet(module.main, argv)
                rows.append((f"step, {script}", f"{attention}, {precision}", f"{ms:.1f} ms",
                             f"{peak_mib(device):.0f} MiB" if device.type == "cuda" else "-"))


def finite_training(device, args, rows, root):
    """Train each script on its synthetic set at the chosen size; every logged loss must be finite."""
    size = 32 if args.quick else 256
    sets = {"unpaired": data.make_synthetic_objects(root / f"objects{size}", seed=0, size=size, n_train=8, n_test=2),
            "supervised": data.make_synthetic_labels(root / f"labels{size}", seed=0, size=size, n_train=8, n_test=2)}
    for script, module in SCRIPTS.items():
        name = f"check_{script}"
        argv = ["--data", str(sets[script]), "--name", name, "--device", str(device), "--max-steps",
                str(args.train_steps), "--sample-every", str(args.train_steps), "--workers", "0"] + sizes(args.quick)[script]
        if script == "unpaired":
            argv += ["--lambda-identity", "0"]
        start = time.time()
        quiet(module.main, argv)
        with open(Path("runs") / name / "losses.csv") as f:
            header, *lines = f.read().splitlines()
        values = [float(v) for line in lines for v in line.split(",")[1:]]
        finite = all(math.isfinite(v) for v in values)
        w_range = [float(line.split(",")[header.split(",").index("w_range")]) for line in lines]
        rows.append((f"train, {script}", f"{len(lines)} steps at {size}",
                     "losses finite" if finite else "NON-FINITE LOSS",
                     f"{time.time() - start:.0f} s, last w_range {w_range[-1]:.3f}"))
        if not finite:
            raise SystemExit(f"gpu_check: a loss of {script} became non-finite: see {Path('runs') / name}")


def bank_against_cpu(device, args, rows):
    """Each step on the device, with the same weights and batch on the CPU: the maps the two banks
    store must agree (up to the device's arithmetic)."""
    for script, module in SCRIPTS.items():
        argv = ["--data", "horse2zebra" if script == "unpaired" else "facades", "--seed", "0"] + sizes(args.quick)[script]
        opt = module.options(argv)
        opt.workers = 0
        model_class = train_unpaired.UnpairedASGIT if script == "unpaired" else train_supervised.SupervisedASGIT
        asgit.seed_everything(0)
        model = model_class(opt, device)
        twin = model_class(opt, torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        worst = 0.0
        for net in (model.G, twin.G):  # dropout draws differ between devices: leave it out of this check
            for m in net.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        for step in range(3):
            buffer = io.BytesIO()  # the device model's state as a checkpoint holds it: copies, not shared
            torch.save(model.state_dict(), buffer)
            buffer.seek(0)
            twin.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=True))
            x, y = [torch.rand(1, 3, opt.crop_size, opt.crop_size, generator=g) * 2 - 1 for _ in range(2)]
            where = torch.tensor([[step * 8, 4, step % 2]]).clamp(max=opt.load_size - opt.crop_size)
            ids = [f"img{step % 2}"]
            batch = ({"A": x, "B": y, "A_id": ids, "B_id": ids, "A_where": where, "B_where": where}
                     if script == "unpaired" else {"A": x, "B": y, "id": ids, "where": where})
            model.train_step(batch)
            twin.train_step(batch)
            on_device, on_cpu = model.bank.state_dict()["maps"], twin.bank.state_dict()["maps"]
            worst = max(worst, max((on_device[k] - on_cpu[k]).abs().max().item() for k in on_cpu))
        rows.append((f"bank, {script}", "3 steps, device vs CPU", f"max abs difference {worst:.2e}",
                     "ok" if worst < 0.05 else "MAPS DIFFER"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:1, mps, cpu")
    p.add_argument("--quick", action="store_true", help="the reduced CPU version: small images and networks")
    p.add_argument("--timed-steps", type=int, help="steps timed per configuration (default 20, --quick 2)")
    p.add_argument("--train-steps", type=int, help="steps of the training check (default 300, --quick 6)")
    args = p.parse_args(argv)
    args.timed_steps = args.timed_steps or (2 if args.quick else 20)
    args.train_steps = args.train_steps or (6 if args.quick else 300)
    device = asgit.pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    rows, start, here = [], time.time(), os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            step_times(device, args, rows)
            finite_training(device, args, rows, Path(tmp))
            bank_against_cpu(device, args, rows)  # on the CPU itself only a run of the check's code
        finally:
            os.chdir(here)
    print(f"gpu_check on {name}, torch {torch.__version__}{', quick' if args.quick else ''}: "
          f"{time.time() - start:.0f} s in all")
    print("| check | configuration | result | notes |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return rows


if __name__ == "__main__":
    main()
