"""Unpaired ASGIT (Sec 3.2 right, Eq. 1, 10, 11): CycleGAN whose discriminators also return an
attention map that guides the generators at the next visit of the same image.

    python train_unpaired.py                       # built-in synthetic object set, a few minutes on a CPU
    python train_unpaired.py --data horse2zebra    # the paper's setting (Sec 4.1.4), on a GPU
    python train_unpaired.py --attention none      # plain CycleGAN, the baseline

Options -> data -> models -> loop (D forward/backward, G forward/backward, bank update) -> test phase.
"""

import argparse
import json
import sys

import torch

import asgit
import data

PRESETS = {
    # Sec 4.1.4: ResNet-9, widths 64, batch 1, 100 + 100 epochs, load 286 / crop 256
    "paper": dict(ngf=64, ndf=64, n_blocks=9, load_size=286, crop_size=256, batch_size=1, epochs=100,
                  epochs_decay=100, lr=2e-4, sample_every=1000, lambda_identity=0.0, snapshot_every=10),
    # small enough to finish in minutes on a 2-core CPU, large enough to translate visibly; the
    # identity loss keeps these tiny networks from repainting the background (see README)
    "synthetic": dict(ngf=32, ndf=16, n_blocks=3, load_size=72, crop_size=64, batch_size=1, epochs=6,
                      epochs_decay=6, lr=2e-4, sample_every=300, lambda_identity=0.5, snapshot_every=2),
}
# options a checkpoint must agree with: they change the networks, the data or the order of samples
MUST_MATCH = ["data", "attention", "pha_layer", "concat", "transfer", "ngf", "ndf", "n_blocks", "load_size", "crop_size",
              "batch_size", "seed"]
# options of the objective: a resumed run must optimise the same loss (test and translate ignore them)
OBJECTIVE = ["gan_mode", "lambda_cyc", "lambda_identity", "pool_size"]


def options(argv=None):
    p = asgit.add_common_options(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--n-blocks", type=int, help="residual blocks of G and F (paper: 9; 6 for 128 crops)")
    p.add_argument("--lambda-cyc", type=float, default=10.0, help="weight of the cycle loss, Eq. 11 (paper: 10)")
    p.add_argument("--lambda-identity", type=float,
                   help="CycleGAN's identity loss, as a fraction of lambda-cyc (CycleGAN: 0.5); the paper: 0 (off)")
    p.add_argument("--pool-size", type=int, default=50, help="past fakes D is shown (CycleGAN: 50)")
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB", help="direction for --translate")
    return asgit.finish_options(p, argv, PRESETS, adopt=MUST_MATCH)


class UnpairedASGIT:
    """G: X -> Y and F: Y -> X (generators), D_Y and D_X (attention discriminators of Y and X), one T
    shared by both directions (Sec 3.2), and the bank of Eq. 1. Domain A is X, domain B is Y."""

    loss_names = ["D_Y", "D_X", "G", "F", "cyc_X", "cyc_Y", "idt", "w_range", "w_range_F"]
    loss_panels = [("D_Y, D_X (Eq. 7 / 6)", ["D_Y", "D_X"]), ("G, F adversarial", ["G", "F"]),
                   ("cycle (Eq. 10), identity", ["cyc_X", "cyc_Y", "idt"]),
                   ("attention reaching G, F", ["w_range", "w_range_F"])]

    def __init__(self, opt, device):
        self.opt, self.device = opt, device
        c = asgit.generator_channels(opt.attention, opt.concat)
        self.G = asgit.ResnetGenerator(c, 3, opt.ngf, opt.n_blocks).to(device)
        self.F = asgit.ResnetGenerator(c, 3, opt.ngf, opt.n_blocks).to(device)
        self.D_Y = asgit.PatchDiscriminator(3, opt.ndf, attention=opt.attention, pha_layer=opt.pha_layer).to(device)
        self.D_X = asgit.PatchDiscriminator(3, opt.ndf, attention=opt.attention, pha_layer=opt.pha_layer).to(device)
        # attention 'none' builds no T and no bank: exactly CycleGAN; --transfer raw / flat keep the bank
        # but need no T
        guided = opt.attention != "none"
        self.T = asgit.AttentionTransfer().to(device) if guided and opt.transfer == "learned" else None
        self.map_size = self.D_Y.map_size(opt.crop_size) if guided else None
        self.bank = asgit.AttentionBank(opt.load_size, opt.crop_size, self.map_size) if guided else None
        g_params = [*self.G.parameters(), *self.F.parameters(), *(self.T.parameters() if self.T else [])]
        self.opt_G = asgit.adam(g_params, opt.lr)  # T is trained with the generators
        self.opt_D = asgit.adam([*self.D_Y.parameters(), *self.D_X.parameters()], opt.lr)
        self.schedulers = [asgit.linear_decay(o, opt.epochs, opt.epochs_decay) for o in (self.opt_G, self.opt_D)]
        self.pool_Y, self.pool_X = asgit.ImagePool(opt.pool_size, opt.seed), asgit.ImagePool(opt.pool_size, opt.seed + 1)
        self.visuals = None

    def weights(self, maps, n, size):
        """The weight maps g(M) for a list of maps (None = the all-ones placeholder of Sec 4), in one
        pass of T. Each result is N x 1 x H x W; all None with attention 'none'."""
        if self.bank is None:
            return [None] * len(maps)
        maps = [asgit.placeholder_map(n, self.map_size, self.device) if M is None else M for M in maps]
        return list(asgit.weight_map(self.T, torch.cat(maps), size, self.opt.transfer).split(n))

    def train_step(self, batch):
        o, dev = self.opt, self.device
        x, y = asgit.to_device(batch["A"], dev), asgit.to_device(batch["B"], dev)
        join = lambda image, weight: asgit.join(image, weight, o.concat)
        # Eq. 1: the maps D gave these images' translations at their previous visit (ones at the first)
        M_x = self.bank.read(batch["A_id"], batch["A_where"], dev) if self.bank else None
        M_y = self.bank.read(batch["B_id"], batch["B_where"], dev) if self.bank else None

        # generator step: Eq. 11 for G, F and T, with D frozen
        asgit.set_requires_grad([self.D_Y, self.D_X], False)
        with asgit.autocast(o, dev):
            # The reconstruction F(G(x)) (and the identity input) gets the all-ones placeholder: G(x) is a
            # new image with no map of its own, and that is exactly what F gets at test time (Sec 4).
            w_x, w_y, w_new = self.weights([M_x, M_y, None], len(x), x.shape[-2:])
            fake_y = self.G(join(x, w_x))
            fake_x = self.F(join(y, w_y))
            rec_x = self.F(join(fake_y, w_new))
            rec_y = self.G(join(fake_x, w_new))
            # one D forward per translation gives both the adversarial loss and the next map (no extra pass)
            pred_y, M_fake_y = self.D_Y(fake_y)
            pred_x, M_fake_x = self.D_X(fake_x)
            loss = {"G": asgit.gan_loss(pred_y, True, o.gan_mode), "F": asgit.gan_loss(pred_x, True, o.gan_mode),
                    "cyc_X": asgit.cycle_loss(x, rec_x), "cyc_Y": asgit.cycle_loss(y, rec_y)}
            loss["idt"] = torch.zeros((), device=dev)
            if o.lambda_identity > 0:
                loss["idt"] = (asgit.identity_loss(y, self.G(join(y, w_new)))
                               + asgit.identity_loss(x, self.F(join(x, w_new))))
            total = (loss["G"] + loss["F"] + o.lambda_cyc * (loss["cyc_X"] + loss["cyc_Y"])
                     + o.lambda_cyc * o.lambda_identity * loss["idt"])
        self.opt_G.zero_grad(set_to_none=True)
        total.backward()
        self.opt_G.step()
        # how much of D's map reached G and F: the within-image range of the weights they got
        loss["w_range"] = asgit.weight_range(w_x) if self.bank else torch.zeros((), device=dev)
        loss["w_range_F"] = asgit.weight_range(w_y) if self.bank else torch.zeros((), device=dev)
        if self.bank:  # store D's view of this translation for the image's next visit
            self.bank.write(batch["A_id"], batch["A_where"], M_fake_y)
            self.bank.write(batch["B_id"], batch["B_where"], M_fake_x)

        # discriminator step: Eq. 7 (or 6) on real images and on the pool of past fakes
        asgit.set_requires_grad([self.D_Y, self.D_X], True)
        with asgit.autocast(o, dev):
            loss["D_Y"] = asgit.discriminator_loss(self.D_Y(y)[0], self.D_Y(self.pool_Y.query(fake_y))[0], o.gan_mode)
            loss["D_X"] = asgit.discriminator_loss(self.D_X(x)[0], self.D_X(self.pool_X.query(fake_x))[0], o.gan_mode)
        self.opt_D.zero_grad(set_to_none=True)
        (loss["D_Y"] + loss["D_X"]).backward()
        self.opt_D.step()
        self.visuals = (x, w_x, fake_y, M_fake_y, rec_x, y, w_y, fake_x, M_fake_x, rec_y)
        return loss

    def end_epoch(self):
        for s in self.schedulers:
            s.step()

    @torch.no_grad()
    def translate(self, images, direction):
        """Test time (Sec 4): the all-ones placeholder map. images N x 3 x H x W in [-1, 1]."""
        net = self.G if direction == "AtoB" else self.F
        net.eval()
        images = images.to(self.device)
        with asgit.autocast(self.opt, self.device):
            out = net(asgit.join(images, self.weights([None], len(images), images.shape[-2:])[0], self.opt.concat))
        net.train()
        return out.float()

    def save_samples(self, path):
        if self.visuals is None:
            return
        x, w_x, fy, M_y, rx, y, w_y, fx, M_x, ry = [v[0].detach().float().cpu() if v is not None else None
                                                    for v in self.visuals]
        if self.bank:
            rows = [[x, w_x, fy, M_y, rx], [y, w_y, fx, M_x, ry]]
            labels = ["input", "weight G/F got", "translation", "D's map of it", "reconstruction"]
        else:
            rows, labels = [[x, fy, rx], [y, fx, ry]], ["input", "translation", "reconstruction"]
        data.save_grid(path, rows, labels)

    def state_dict(self):
        nets = {k: getattr(self, k).state_dict() for k in ("G", "F", "D_Y", "D_X", "opt_G", "opt_D")}
        return {**nets, "T": self.T.state_dict() if self.T else None,
                "schedulers": [s.state_dict() for s in self.schedulers],
                "pool_Y": self.pool_Y.state_dict(), "pool_X": self.pool_X.state_dict(),
                "bank": self.bank.state_dict() if self.bank else None}

    def snapshot_state(self):
        """What the test phase needs: G, F and T."""
        return {"G": self.G.state_dict(), "F": self.F.state_dict(), "T": self.T.state_dict() if self.T else None}

    def load_snapshot(self, state):
        self.G.load_state_dict(state["G"])
        self.F.load_state_dict(state["F"])
        if self.T:
            self.T.load_state_dict(state["T"])

    def load_state_dict(self, state):
        for k in ("G", "F", "D_Y", "D_X", "opt_G", "opt_D"):
            getattr(self, k).load_state_dict(state[k])
        if self.T:
            self.T.load_state_dict(state["T"])
        if self.bank:
            self.bank.load_state_dict(state["bank"])
        for s, st in zip(self.schedulers, state["schedulers"]):
            s.load_state_dict(st)
        self.pool_Y.load_state_dict(state["pool_Y"], self.device)
        self.pool_X.load_state_dict(state["pool_X"], self.device)


def test_phase(model, opt, root, run, write=True):
    """Translate every test image both ways with the placeholder map (Sec 4) into runs/NAME/test/ and
    write metrics.json: distances to the known truth on the synthetic set, KID x 100 on real data.
    From a snapshot (--epoch N): test_epoch_NNN/ and metrics_epoch_NNN.json. write=False: the scores only."""
    out, suffix = run / f"test{asgit.epoch_suffix(opt)}", asgit.epoch_suffix(opt)
    synthetic = data.is_synthetic(root)
    kid_net = None
    if not synthetic:
        try:
            kid_net = asgit.inception_model(model.device)
        except asgit.InceptionUnavailable as e:
            print(e)
    metrics = {}
    for direction, src, dst in (("AtoB", "testA", "testB"), ("BtoA", "testB", "testA")):
        outputs = []
        for batch in data.make_test_loader(root / src, opt.crop_size, opt.workers, model.device):
            fake = model.translate(batch["image"], direction).cpu()
            for img, name in zip(fake, batch["name"]):
                if write:
                    data.save_image(img, out / direction / name)
            if synthetic:
                truth, mask = data.load_truths(root, src, batch["name"], opt.crop_size)
                outputs.append((fake, batch["image"], truth, mask))
            elif kid_net is not None:
                outputs.append(asgit.inception_features(kid_net, fake.to(model.device)).cpu())
        if synthetic:
            metrics[direction] = asgit.truth_distances(*[torch.cat(t) for t in zip(*outputs)])
        elif kid_net is None:
            metrics[direction] = {"kid": "skipped: Inception v3 weights unavailable"}
        else:
            # Sec 4.1.3: target-KID against the target test set, fused-KID against both test sets
            target, source = [torch.cat([asgit.inception_features(kid_net, b["image"].to(model.device)).cpu()
                                         for b in data.make_test_loader(root / d, opt.crop_size, opt.workers,
                                                                        model.device)]) for d in (dst, src)]
            fake = torch.cat(outputs)
            try:
                t_mean, t_std = asgit.kernel_inception_distance(target, fake)
                f_mean, f_std = asgit.kernel_inception_distance(torch.cat([target, source]), fake)
                metrics[direction] = {"target_kid_x100": 100 * t_mean, "target_kid_std_x100": 100 * t_std,
                                      "fused_kid_x100": 100 * f_mean, "fused_kid_std_x100": 100 * f_std}
            except ValueError as e:  # a test folder too small to score
                metrics[direction] = {"kid": f"skipped: {e}"}
        if write:
            print(f"{direction}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                                              for k, v in metrics[direction].items()))
    if write:
        (run / f"metrics{suffix}.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"test outputs in {out}, scores in {run / f'metrics{suffix}.json'}")
    return metrics


def main(argv=None):
    opt = options(argv)
    device = asgit.setup(opt)
    if opt.benchmark:
        return asgit.benchmark(UnpairedASGIT(opt, device), opt, lambda a, b, ids, where: {
            "A": a, "B": b, "A_id": ids, "B_id": ids, "A_where": where, "B_where": where})
    model = UnpairedASGIT(opt, device)
    run, progress = asgit.start_run(opt, model, MUST_MATCH, OBJECTIVE)
    if opt.translate:  # the ResNet generators take sides divisible by 4
        return data.translate_images(lambda imgs: model.translate(imgs, opt.direction), opt.translate,
                                     run / f"translated{asgit.epoch_suffix(opt)}", 4, opt.translate_size)
    root = data.resolve_data(opt.data, "unaligned")
    if not opt.test_only:
        print(f"training {opt.name} on {device}: {root}; run folder {run}")
        dataset = data.UnalignedDataset(root, "train", opt.load_size, opt.crop_size, train=True)
        if not asgit.fit(model, opt, run, progress, **data.training_io(dataset, model, opt, run, device),
                         score=lambda: test_phase(model, opt, root, run, write=False)):
            return
    test_phase(model, opt, root, run)


if __name__ == "__main__":
    try:
        main()
    except (data.DataError, asgit.CheckpointMismatch) as e:
        sys.exit(f"error: {e}")
