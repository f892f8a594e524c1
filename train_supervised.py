"""Supervised ASGIT (Sec 3.2 left, Eq. 1, 8, 9): pix2pix whose conditional discriminator also
returns an attention map that guides the generator at the next visit of the same image.

    python train_supervised.py                                  # built-in label -> photo set, CPU, minutes
    python train_supervised.py --direction BtoA                 # photo -> label, scored like FCN-scores
    python train_supervised.py --data cityscapes --direction BtoA --attention none   # plain pix2pix

Options -> data -> models -> loop (G forward, D step, G step, bank update) -> test phase.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

import asgit
import data

PRESETS = {
    # Sec 4.1.4: U-Net 256, widths 64, batch 1, 100 + 100 epochs, load 286 / crop 256
    # (--load-size 143 --crop-size 128 for the paper's Cityscapes runs)
    "paper": dict(ngf=64, ndf=64, load_size=286, crop_size=256, batch_size=1, epochs=100, epochs_decay=100,
                  lr=2e-4, sample_every=1000, snapshot_every=10),
    # small enough to finish in minutes on a 2-core CPU
    "synthetic": dict(ngf=16, ndf=16, load_size=72, crop_size=64, batch_size=1, epochs=4, epochs_decay=4,
                      lr=2e-4, sample_every=200, snapshot_every=2),
}
MUST_MATCH = ["data", "direction", "attention", "pha_layer", "concat", "transfer", "netG", "ngf", "ndf", "load_size",
              "crop_size", "batch_size", "seed"]
# options of the objective: a resumed run must optimise the same loss (test and translate ignore them)
OBJECTIVE = ["gan_mode", "lambda_l1"]


def options(argv=None):
    p = asgit.add_common_options(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                   help="which half of the A|B images is the input (synthetic set: A = label map, B = photo)")
    p.add_argument("--netG", choices=("unet", "resnet_9blocks", "resnet_6blocks"), default="unet",
                   help="G: pix2pix's U-Net (depth from --crop-size: 8 levels at 256, 7 at 128) or a ResNet")
    p.add_argument("--lambda-l1", type=float, default=100.0, help="weight of the L1 loss, Eq. 9 (paper: 100)")
    opt = asgit.finish_options(p, argv, PRESETS, name_parts=["direction"], adopt=MUST_MATCH)
    if opt.netG == "unet":
        try:
            asgit.unet_downs_for(opt.crop_size)
        except ValueError as e:
            p.error(f"{e}, or --netG resnet_9blocks")
    return opt


class SupervisedASGIT:
    """G: X -> Y (generator), D_Y (conditional attention discriminator: it sees input and output
    together), T (attention transfer block), and the bank of Eq. 1. X is the input half, Y the target."""

    loss_names = ["D_Y", "G", "L1", "w_range"]
    loss_panels = [("D_Y (Eq. 7 / 6)", ["D_Y"]), ("G adversarial", ["G"]), ("L1 (Eq. 8)", ["L1"]),
                   ("attention reaching G", ["w_range"])]

    def __init__(self, opt, device):
        self.opt, self.device = opt, device
        c = asgit.generator_channels(opt.attention, opt.concat)
        if opt.netG == "unet":
            self.G = asgit.UnetGenerator(c, 3, asgit.unet_downs_for(opt.crop_size), opt.ngf)
        else:
            self.G = asgit.ResnetGenerator(c, 3, opt.ngf, 9 if opt.netG == "resnet_9blocks" else 6, norm="batch",
                                           use_dropout=True)
        self.G.to(device)
        self.D_Y = asgit.PatchDiscriminator(6, opt.ndf, norm="batch", attention=opt.attention,
                                            pha_layer=opt.pha_layer).to(device)
        # attention 'none' builds no T and no bank: exactly pix2pix; --transfer raw / flat keep the bank
        # but need no T
        guided = opt.attention != "none"
        self.T = asgit.AttentionTransfer().to(device) if guided and opt.transfer == "learned" else None
        self.map_size = self.D_Y.map_size(opt.crop_size) if guided else None
        self.bank = asgit.AttentionBank(opt.load_size, opt.crop_size, self.map_size) if guided else None
        self.opt_G = asgit.adam([*self.G.parameters(), *(self.T.parameters() if self.T else [])], opt.lr)
        self.opt_D = asgit.adam(self.D_Y.parameters(), opt.lr)
        self.schedulers = [asgit.linear_decay(o, opt.epochs, opt.epochs_decay) for o in (self.opt_G, self.opt_D)]
        self.visuals = None

    def weight(self, M, n, size):
        """g(M), N x 1 x H x W (M None = the all-ones placeholder of Sec 4); None with attention 'none'."""
        if self.bank is None:
            return None
        M = asgit.placeholder_map(n, self.map_size, self.device) if M is None else M
        return asgit.weight_map(self.T, M, size, self.opt.transfer)

    def train_step(self, batch):
        o, dev = self.opt, self.device
        x, y = asgit.to_device(batch["A"], dev), asgit.to_device(batch["B"], dev)
        # Eq. 1: the map D gave this image's translation at its previous visit (ones at the first)
        M_x = self.bank.read(batch["id"], batch["where"], dev) if self.bank else None

        with asgit.autocast(o, dev):
            w_x = self.weight(M_x, len(x), x.shape[-2:])
            fake_y = self.G(asgit.join(x, w_x, o.concat))

        # discriminator step first, as pix2pix: Eq. 7 (or 6) on (x, y) and (x, G(x')); no pool of fakes
        asgit.set_requires_grad([self.D_Y], True)
        with asgit.autocast(o, dev):
            loss = {"D_Y": asgit.discriminator_loss(self.D_Y(torch.cat([x, y], 1))[0],
                                                    self.D_Y(torch.cat([x, fake_y.detach()], 1))[0], o.gan_mode)}
        self.opt_D.zero_grad(set_to_none=True)
        loss["D_Y"].backward()
        self.opt_D.step()

        # generator step: Eq. 9 for G and T against the updated D, frozen; its forward on (x, G(x'))
        # gives both the adversarial loss and the map stored for the next visit (no extra pass)
        asgit.set_requires_grad([self.D_Y], False)
        with asgit.autocast(o, dev):
            pred, M_fake = self.D_Y(torch.cat([x, fake_y], 1))
            loss["G"], loss["L1"] = asgit.gan_loss(pred, True, o.gan_mode), asgit.l1_loss(fake_y, y)
            total = loss["G"] + o.lambda_l1 * loss["L1"]
        self.opt_G.zero_grad(set_to_none=True)
        total.backward()
        self.opt_G.step()
        loss["w_range"] = asgit.weight_range(w_x) if self.bank else torch.zeros((), device=dev)
        if self.bank:  # store D's view of this translation for the image's next visit
            self.bank.write(batch["id"], batch["where"], M_fake)
        self.visuals = (x, w_x, fake_y, M_fake, y)
        return loss

    def end_epoch(self):
        for s in self.schedulers:
            s.step()

    @torch.no_grad()
    def translate(self, images, direction=None):
        """Test time (Sec 4): the all-ones placeholder map. As pix2pix does, G stays in training mode:
        dropout stays on and batch norm uses the statistics of the test batch (test one image a batch)."""
        images = images.to(self.device)
        with asgit.autocast(self.opt, self.device):
            return self.G(asgit.join(images, self.weight(None, len(images), images.shape[-2:]), self.opt.concat)).float()

    def save_samples(self, path):
        if self.visuals is None:
            return
        x, w, fy, M, y = [v[0].detach().float().cpu() if v is not None else None for v in self.visuals]
        if self.bank:
            data.save_grid(path, [[x, w, fy, M, y]], ["input", "weight G got", "translation", "D's map of it", "target"])
        else:
            data.save_grid(path, [[x, fy, y]], ["input", "translation", "target"])

    def state_dict(self):
        return {"G": self.G.state_dict(), "D_Y": self.D_Y.state_dict(), "opt_G": self.opt_G.state_dict(),
                "opt_D": self.opt_D.state_dict(), "T": self.T.state_dict() if self.T else None,
                "schedulers": [s.state_dict() for s in self.schedulers],
                "bank": self.bank.state_dict() if self.bank else None}

    def snapshot_state(self):
        """What the test phase needs: G and T."""
        return {"G": self.G.state_dict(), "T": self.T.state_dict() if self.T else None}

    def load_snapshot(self, state):
        self.G.load_state_dict(state["G"])
        if self.T:
            self.T.load_state_dict(state["T"])

    def load_state_dict(self, state):
        for k in ("G", "D_Y", "opt_G", "opt_D"):
            getattr(self, k).load_state_dict(state[k])
        if self.T:
            self.T.load_state_dict(state["T"])
        if self.bank:
            self.bank.load_state_dict(state["bank"])
        for s, st in zip(self.schedulers, state["schedulers"]):
            s.load_state_dict(st)


def label_half(opt, root):
    """(the half of each A|B file that is a colour label map, its palette) for the sets whose labels are
    palette colours, else (None, None): the synthetic set's A, Cityscapes' B (pix2pix's layout)."""
    if data.is_synthetic(root):
        return "A", [rgb for _, rgb in data.SYNTH_PALETTE]
    if Path(opt.data).name == "cityscapes":
        return "B", [rgb for _, rgb in data.CITYSCAPES_PALETTE]
    return None, None


def label_palette(opt, root):
    """The palette of the output when the output is a colour label map (photo -> label), else None."""
    half, palette = label_half(opt, root)
    return palette if half == ("B" if opt.direction == "AtoB" else "A") else None


def test_phase(model, opt, root, run, write=True):
    """Translate every test pair with the placeholder map (Sec 4) into runs/NAME/test/ and write
    metrics.json: L1 and PSNR to the target, and for photo -> label the FCN-score definitions
    (per-pixel accuracy, per-class accuracy, mean IoU) of the nearest palette colour of each output pixel
    against the exact colour of the target, void (any other colour) not scored. From a snapshot
    (--epoch N): test_epoch_NNN/ and metrics_epoch_NNN.json. write=False: the scores only."""
    out, suffix = run / f"test{asgit.epoch_suffix(opt)}", asgit.epoch_suffix(opt)
    torch.manual_seed(opt.seed)  # dropout stays on at test time (pix2pix): make it repeatable
    dataset = data.AlignedDataset(root, data.aligned_test_phase(root), opt.direction, opt.crop_size, opt.crop_size,
                                  train=False, label_half=label_half(opt, root)[0])
    palette = label_palette(opt, root)
    fakes, targets = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        fake = model.translate(item["A"][None])[0].cpu()
        if write:
            data.save_image(fake, out / opt.direction / (Path(item["id"]).stem + ".png"))
        fakes.append(fake)
        targets.append(item["B"])
    fake, target = torch.stack(fakes), torch.stack(targets)
    metrics = {"l1": asgit.l1_loss(fake, target).item(), "psnr": asgit.psnr(fake, target)}
    if palette is not None:  # scored as saved (8 bits a channel), so the PNGs in test/ give the same numbers
        saved = torch.stack([data.pil_to_tensor(data.tensor_to_pil(f)) for f in fakes])
        metrics.update(asgit.segmentation_scores(asgit.nearest_palette_labels(saved, palette),
                                                 asgit.exact_palette_labels(target, palette), len(palette)))
    elif Path(opt.data).name == "cityscapes":
        metrics["fcn_score"] = ("not computed: label -> photo FCN-scores need an FCN trained on Cityscapes, "
                                "which is not available here (see README)")
    metrics = {opt.direction: metrics}
    if write:
        print(f"{opt.direction}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                                              for k, v in metrics[opt.direction].items()))
        (run / f"metrics{suffix}.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"test outputs in {out}, scores in {run / f'metrics{suffix}.json'}")
    return metrics


def main(argv=None):
    opt = options(argv)
    device = asgit.setup(opt)
    if opt.benchmark:
        return asgit.benchmark(SupervisedASGIT(opt, device), opt, lambda a, b, ids, where: {
            "A": a, "B": b, "id": ids, "where": where})
    model = SupervisedASGIT(opt, device)
    run, progress = asgit.start_run(opt, model, MUST_MATCH, OBJECTIVE)
    if opt.translate:  # the U-Net takes sides divisible by 2 ** its depth, the ResNet by 4
        multiple = 2 ** asgit.unet_downs_for(opt.crop_size) if opt.netG == "unet" else 4
        return data.translate_images(model.translate, opt.translate, run / f"translated{asgit.epoch_suffix(opt)}",
                                     multiple, opt.translate_size)
    root = data.resolve_data(opt.data, "aligned")
    if not opt.test_only:
        print(f"training {opt.name} on {device}: {root}; run folder {run}")
        dataset = data.AlignedDataset(root, "train", opt.direction, opt.load_size, opt.crop_size, train=True,
                                      label_half=label_half(opt, root)[0])
        if not asgit.fit(model, opt, run, progress, **data.training_io(dataset, model, opt, run, device),
                         score=lambda: test_phase(model, opt, root, run, write=False)):
            return
    test_phase(model, opt, root, run)


if __name__ == "__main__":
    try:
        main()
    except (data.DataError, asgit.CheckpointMismatch) as e:
        sys.exit(f"error: {e}")
