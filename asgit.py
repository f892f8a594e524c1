"""ASGIT: Attention-Based Spatial Guidance for Image-to-Image Translation (Lin et al., WACV 2021).

One module, in the paper's order (section numbers refer to the paper):

  Sec 3.2  generators G (and F): ResNet and U-Net, as in pytorch-CycleGAN-and-pix2pix
  Sec 3.3  the attention discriminator D: a 70x70 PatchGAN that also returns a map M,
           by post hoc attention (PHA, Eq. 2) or a trainable attention module (TAM, Eq. 3)
  Sec 3.4  the attention transfer block T = g(M; theta) and the two ways to join its pixel
           weight map to the input: RHP (Eq. 4) and alpha (Eq. 5)
  Sec 3.5  the losses: GAN (Eq. 6 vanilla, Eq. 7 LSGAN), L1 (Eq. 8), cycle (Eq. 10)
  Eq. 1    the feedback loop: a bank that keeps, per training image, the last map D gave
           for its translation; G reads it at the image's next visit
  Sec 4    the test-time placeholder (all ones) and the scores: KID, FCN-style segmentation scores
  last     the training machinery both scripts share: devices, checkpoints, schedules, logs

Names follow the paper: G: X -> Y and F: Y -> X are generators, D_Y and D_X the discriminators of
domains Y and X, T the attention transfer block, M an attention map in [0, 1] at D's resolution,
x' the generator input built from x and T(M), lambda_cyc the weight of the cycle loss.
"""

import argparse
import csv
import json
import math
import os
import random
import signal
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as nnf

ATTENTIONS = ("pha", "tam", "none")
CONCATS = ("rhp", "alpha")
GAN_MODES = ("lsgan", "vanilla")


# ------------------------------------------------------------------------------------------------
# Sec 3.2: generators (the architectures of pytorch-CycleGAN-and-pix2pix, layer for layer)
# ------------------------------------------------------------------------------------------------

def norm_layer(kind):
    """'instance' (CycleGAN: no affine, no running stats), 'batch' (pix2pix) or 'none'."""
    if kind == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if kind == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    if kind == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: use instance, batch or none")


def init_weights(net, gain=0.02):
    """Normal(0, 0.02) for convolutions, Normal(1, 0.02) for batch-norm scales, zero biases."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


class ResnetBlock(nn.Module):
    """x + (reflect-pad, 3x3 conv, norm, ReLU, [dropout], reflect-pad, 3x3 conv, norm)(x)."""

    def __init__(self, dim, norm, use_dropout, use_bias):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm(dim)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """Johnson et al.'s ResNet generator, CycleGAN's default (9 blocks at 256, 6 at 128).

    N x in_channels x H x W -> N x out_channels x H x W in [-1, 1]; H and W divisible by 4.
    """

    def __init__(self, in_channels, out_channels, ngf=64, n_blocks=9, norm="instance", use_dropout=False):
        super().__init__()
        norm_fn = norm_layer(norm)
        use_bias = norm != "batch"  # batch norm has its own shift
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=use_bias), norm_fn(ngf), nn.ReLU(True)]
        for i in range(2):  # two stride-2 convolutions: H -> H/4, ngf -> 4 ngf
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=use_bias), norm_fn(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(4 * ngf, norm_fn, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(2):  # back up: H/4 -> H
            c = ngf * 4 // 2 ** i
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=use_bias),
                       norm_fn(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x):
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"ResnetGenerator needs a height and width divisible by 4, got {tuple(x.shape[-2:])}")
        return self.model(x)


class UnetSkipBlock(nn.Module):
    """One level of the U-Net: down (LeakyReLU, 4x4 stride-2 conv, norm), the inner levels, up
    (ReLU, 4x4 stride-2 transposed conv, norm), and the skip connection that concatenates."""

    def __init__(self, outer_nc, inner_nc, in_nc=None, inner=None, outermost=False, innermost=False,
                 norm=None, use_dropout=False, use_bias=False):
        super().__init__()
        self.outermost = outermost
        in_nc = outer_nc if in_nc is None else in_nc
        down_conv = nn.Conv2d(in_nc, inner_nc, 4, stride=2, padding=1, bias=use_bias)
        # pix2pix's in-place LeakyReLU also rewrites the tensor the skip connection concatenates,
        # so the skip carries the activated features; kept as is to match the original networks.
        if outermost:
            up = nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, stride=2, padding=1)
            layers = [down_conv, inner, nn.ReLU(True), up, nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True), up, norm(outer_nc)]
        else:
            up = nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2, True), down_conv, norm(inner_nc), inner, nn.ReLU(True), up, norm(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)  # N x (outer + outer) x H x W


class UnetGenerator(nn.Module):
    """pix2pix's U-Net: num_downs stride-2 levels, so the input side must be a multiple of
    2 ** num_downs (8 levels: 256, "unet_256"; 7 levels: 128, "unet_128").

    N x in_channels x H x W -> N x out_channels x H x W in [-1, 1].
    """

    def __init__(self, in_channels, out_channels, num_downs=8, ngf=64, norm="batch", use_dropout=True):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"UnetGenerator needs num_downs >= 5, got {num_downs}")
        self.num_downs = num_downs
        norm_fn = norm_layer(norm)
        kw = dict(norm=norm_fn, use_bias=norm != "batch")
        block = UnetSkipBlock(8 * ngf, 8 * ngf, innermost=True, **kw)
        for _ in range(num_downs - 5):  # the 8 ngf levels in the middle carry the dropout
            block = UnetSkipBlock(8 * ngf, 8 * ngf, inner=block, use_dropout=use_dropout, **kw)
        for mult in (4, 2, 1):
            block = UnetSkipBlock(mult * ngf, 2 * mult * ngf, inner=block, **kw)
        self.model = UnetSkipBlock(out_channels, ngf, in_nc=in_channels, inner=block, outermost=True, **kw)
        init_weights(self)

    def forward(self, x):
        k = 2 ** self.num_downs
        if x.shape[-1] % k or x.shape[-2] % k:
            raise ValueError(
                f"UnetGenerator with num_downs={self.num_downs} needs a height and width divisible by {k} "
                f"(e.g. {k}), got {tuple(x.shape[-2:])}: use --crop-size {k}, or num_downs = log2 of the crop")
        return self.model(x)


def unet_downs_for(size):
    """The U-Net depth that takes a size x size input down to 1 x 1 (256 -> 8, 128 -> 7, 64 -> 6)."""
    downs = int(round(math.log2(size))) if size > 0 else 0
    if 2 ** downs != size or downs < 5:
        raise ValueError(f"the U-Net takes square crops of 32, 64, 128, 256, 512 ... pixels, got --crop-size {size}")
    return downs


# ------------------------------------------------------------------------------------------------
# Sec 3.3: the attention discriminator, PatchGAN + PHA (Eq. 2) or TAM (Eq. 3)
# ------------------------------------------------------------------------------------------------

def post_hoc_attention(activation, eps=1e-8):
    """Eq. 2: M = norm( (1/c) sum_i |a_{t,i}| ), min-max normalised per image.

    N x c x h x w -> N x 1 x h x w in [0, 1]. A flat map says nothing about where to look, so it
    becomes all ones (the same as the placeholder of Sec 4) instead of dividing by zero.
    """
    m = activation.abs().mean(1, keepdim=True)  # N x 1 x h x w
    lo = m.amin(dim=(2, 3), keepdim=True)
    span = m.amax(dim=(2, 3), keepdim=True) - lo
    return torch.where(span > eps, (m - lo) / span.clamp_min(eps), torch.ones_like(m))


class TrainableAttention(nn.Module):
    """Eq. 3: E_C = (A_C(x) + 1) * T_C(x), with a one-conv trunk T_C (the paper replaces RAM's
    residual blocks by a single convolution) and a sigmoid attention branch A_C. M = mean_C A_C."""

    def __init__(self, channels, norm):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), norm(channels), nn.LeakyReLU(0.2))
        self.mask = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), norm(channels), nn.LeakyReLU(0.2),
                                  nn.Conv2d(channels, channels, 1), nn.Sigmoid())

    def forward(self, x):
        a = self.mask(x)  # N x C x h x w in [0, 1]
        return (a + 1) * self.trunk(x), a.mean(1, keepdim=True)  # E, M: N x 1 x h x w


class PatchDiscriminator(nn.Module):
    """The 70x70 PatchGAN (n_layers=3), which also returns the attention map M.

    forward: N x in_channels x H x W -> (prediction N x 1 x h' x w' (30 x 30 at 256), M)
    M is N x 1 x h x w in [0, 1], or None with attention="none" (plain PatchGAN).
      pha: Eq. 2 on the output of conv layer `pha_layer` (1-based, after its norm and LeakyReLU);
           the paper's 4th conv gives a 31 x 31 map at 256. No parameters, no second pass.
      tam: a TrainableAttention module after the first `tam_after` conv layers (64 x 64 at 256).
    The supervised (conditional) D takes input and output concatenated: in_channels = 6.
    """

    def __init__(self, in_channels, ndf=64, n_layers=3, norm="instance", attention="pha", pha_layer=4, tam_after=2):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}: use one of {', '.join(ATTENTIONS)}")
        n_convs = n_layers + 2
        if attention == "pha" and not 1 <= pha_layer <= n_convs:
            raise ValueError(f"--pha-layer must be between 1 and {n_convs} (the conv layers of D), got {pha_layer}")
        if attention == "tam" and not 1 <= tam_after < n_convs:
            raise ValueError(f"tam_after must be between 1 and {n_convs - 1}, got {tam_after}")
        self.attention, self.pha_layer, self.tam_after = attention, pha_layer, tam_after
        norm_fn = norm_layer(norm)
        use_bias = norm != "batch"
        # one entry per conv layer, so the layer PHA reads is a plain index
        widths = [in_channels] + [ndf * min(2 ** i, 8) for i in range(n_layers + 1)]
        convs = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True))]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            convs.append(nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 4, stride=stride, padding=1, bias=use_bias),
                                       norm_fn(widths[i + 1]), nn.LeakyReLU(0.2, True)))
        convs.append(nn.Sequential(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1)))
        self.convs = nn.ModuleList(convs)
        self.tam = TrainableAttention(widths[tam_after], norm_fn) if attention == "tam" else None
        init_weights(self)

    def forward(self, x):
        M = None
        for i, conv in enumerate(self.convs, start=1):
            x = conv(x)
            if self.attention == "pha" and i == self.pha_layer:
                M = post_hoc_attention(x.detach())  # M only feeds the bank, which keeps no graph
            elif self.attention == "tam" and i == self.tam_after:
                x, M = self.tam(x)
        return x, M

    @torch.no_grad()
    def map_size(self, in_size):
        """(h, w) of M for a square input of in_size (one dry pass on zeros)."""
        p = next(self.parameters())
        was_training = self.training
        self.eval()
        _, M = self(torch.zeros(1, self.convs[0][0].in_channels, in_size, in_size, device=p.device))
        self.train(was_training)
        return tuple(M.shape[-2:]) if M is not None else None


# ------------------------------------------------------------------------------------------------
# Sec 3.4: the attention transfer block T and the concatenations RHP (Eq. 4) and alpha (Eq. 5)
# ------------------------------------------------------------------------------------------------

class AttentionTransfer(nn.Module):
    """T = g(M; theta): a small 3-layer conv net that turns D's map into a pixel weight map.

    N x 1 x h x w (D's resolution) -> N x 1 x H x W (image size) in (0, 1).
    The convolutions run at D's resolution (cheap) and the result is upsampled bilinearly.
    Replicate padding keeps a flat map flat, so the all-ones placeholder gives a flat weight.

    Initialisation (the paper gives none): N(0, 0.02) like every other layer, plus an identity
    path, so that at the first step T(M) ~ sigmoid(gain * (M - 1/2)) follows M (correlation ~0.99,
    range ~0.7 for a min-max normalised map). Plain N(0, 0.02) convs start flat (T(M) = 0.50 +- 0.001
    for any M), which would feed G a constant gain instead of D's attention. Whether training keeps
    the map alive is left to the loss, and shown by the w_range column of losses.csv.
    """

    def __init__(self, width=16, gain=4.0):
        super().__init__()
        conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1, padding_mode="replicate")
        self.net = nn.Sequential(conv(1, width), nn.LeakyReLU(0.2), conv(width, width), nn.LeakyReLU(0.2), conv(width, 1))
        init_weights(self)
        first, middle, last = self.net[0], self.net[2], self.net[4]
        with torch.no_grad():  # centre taps: copy M into every channel, pass it on, average it back
            first.weight[:, 0, 1, 1] += 1
            middle.weight += nn.init.dirac_(torch.empty_like(middle.weight))
            last.weight[0, :, 1, 1] += gain / width
            last.bias.fill_(-gain / 2)

    def forward(self, M, size):
        return torch.sigmoid(upsample(self.net(M), size))  # N x 1 x H x W


def upsample(M, size):
    """A map at D's resolution to the image size: N x 1 x h x w -> N x 1 x H x W (bilinear)."""
    return nnf.interpolate(M, size=tuple(size), mode="bilinear", align_corners=False)


TRANSFERS = ("learned", "raw", "flat")


def weight_map(T, M, size, transfer="learned"):
    """The pixel weight map g(M) that Eq. 4 / 5 join to the input. N x 1 x h x w -> N x 1 x H x W.

    learned: T(M), the paper's attention transfer block (Sec 3.4).
    raw:     up(M), the map itself, as the authors' unpaired code feeds it (no T).
    flat:    0.5 everywhere whatever M says: a control with the same mean input gain and no
             attention (x' = 1.5 x, the authors' test-time weight, at every visit).
    """
    if transfer == "learned":
        return T(M, size)
    if transfer == "raw":
        return upsample(M, size)
    if transfer == "flat":
        return torch.full((len(M), 1, *size), 0.5, device=M.device, dtype=M.dtype)
    raise ValueError(f"unknown --transfer {transfer!r}: use one of {', '.join(TRANSFERS)}")


def weight_range(weight):
    """The mean within-image range (max - min) of weight maps N x 1 x H x W: 0 when G's input is
    scaled uniformly (first visits, the placeholder, a flat T), up to 1 when D's map reaches G
    at full contrast. Logged every step as w_range."""
    w = weight.detach().float().flatten(1)  # N x (H W)
    return (w.amax(1) - w.amin(1)).mean()


def rhp(x, weight):
    """Eq. 4, Residual Hadamard Product: x' = (g(M) + 1) * x. N x 3 x H x W stays N x 3 x H x W."""
    return (weight + 1) * x


def alpha(x, weight):
    """Eq. 5, alpha concatenation: x' = [x_r, x_g, x_b, g(M)]. N x 3 x H x W -> N x 4 x H x W."""
    return torch.cat([x, weight], 1)


def join(x, weight, concat):
    """x' = x (+) g(M) of Eq. 1: RHP (Eq. 4) or alpha (Eq. 5) with weight = weight_map(...). weight None
    (attention 'none', no T) gives x itself: plain CycleGAN / pix2pix, at no extra cost."""
    if weight is None:
        return x
    return rhp(x, weight) if concat == "rhp" else alpha(x, weight)


def generator_channels(attention, concat):
    """Input channels of G: 4 with alpha concatenation (Eq. 5), else 3."""
    return 4 if attention != "none" and concat == "alpha" else 3


def placeholder_map(n, map_size, device):
    """Sec 4: at test time (and at an image's first visit, Sec 3.2) the attention is all ones."""
    return torch.ones(n, 1, *map_size, device=device)


# ------------------------------------------------------------------------------------------------
# Sec 3.5: losses
# ------------------------------------------------------------------------------------------------

def gan_loss(prediction, target_is_real, mode="lsgan"):
    """The adversarial term of one side, averaged over D's patches.

    lsgan (Eq. 7, the default): mean (D(.) - t)^2 with t = 1 for real, 0 for fake.
    vanilla (Eq. 6): binary cross-entropy of D's logits against t (log D(y) + log(1 - D(G(x')))).
    G minimises gan_loss(D(G(x')), True); D uses discriminator_loss.
    """
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    if mode == "lsgan":
        return nnf.mse_loss(prediction, target)
    if mode == "vanilla":
        return nnf.binary_cross_entropy_with_logits(prediction, target)
    raise ValueError(f"unknown --gan-mode {mode!r}: use lsgan or vanilla")


def discriminator_loss(pred_real, pred_fake, mode="lsgan"):
    """D's side of Eq. 6 / 7, halved as in CycleGAN and pix2pix so D learns slower than G:
    0.5 * (loss(D(y), real) + loss(D(G(x')), fake))."""
    return 0.5 * (gan_loss(pred_real, True, mode) + gan_loss(pred_fake, False, mode))


def l1_loss(fake, target):
    """Eq. 8: L_L1(G) = E ||y - G(x')||_1 (mean absolute error per pixel and channel)."""
    return (target - fake).abs().mean()


def cycle_loss(real, reconstructed):
    """One term of Eq. 10: E ||F(G(x)) - x||_1 (or E ||G(F(y)) - y||_1). Eq. 10 is the sum of both."""
    return (reconstructed - real).abs().mean()


def identity_loss(real, same):
    """CycleGAN's optional identity term, E ||G(y) - y||_1; not in the paper, off by default."""
    return (same - real).abs().mean()


class ImagePool:
    """CycleGAN's history of 50 generated images: D sees a past fake half of the time (Shrivastava
    et al.), which steadies training. Has its own seeded RNG so a resumed run draws the same."""

    def __init__(self, size=50, seed=0):
        self.size, self.images, self.rng = size, [], random.Random(seed)

    def query(self, fakes):
        if self.size == 0:
            return fakes
        out = []
        for img in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(img)
                out.append(img)
            elif self.rng.random() < 0.5:
                i = self.rng.randrange(self.size)
                out.append(self.images[i])
                self.images[i] = img
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self):
        return {"images": [i.cpu() for i in self.images], "rng": self.rng.getstate()}

    def load_state_dict(self, state, device):
        self.images = [i.to(device) for i in state["images"]]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------------
# Eq. 1: the attention feedback bank
# ------------------------------------------------------------------------------------------------

class AttentionBank:
    """Keeps, per training image id, the last attention map D produced for that image's translation.

    Eq. 1: x'^(k+1) = x (+) T(M^(k)): G reads the map stored at the image's previous visit; an image
    never seen reads as all ones. Training crops and flips move the image under the map, so each map
    is kept in the coordinates of the whole resized image (load_size x load_size) at D's resolution
    (map_size for a crop_size input): a write pastes the map where its crop lay (undoing the flip),
    a read cuts out the current crop's window (and flips it). Positions snap to D's grid (one cell
    is crop_size / map_size pixels, ~8 at 256). Maps are detached and kept on the CPU, ~5 KB an
    image at 256; parts of an image D has not looked at yet read as ones.

    CUDA writes are asynchronous copies finished lazily at a later read, so the training step never
    waits for the device.
    """

    def __init__(self, load_size, crop_size, map_size):
        self.load_size, self.crop_size = load_size, crop_size
        self.h, self.w = map_size
        # the whole image at D's resolution: every crop offset 0..load-crop must fit
        self.full = (self._cell(load_size - crop_size, self.h) + self.h, self._cell(load_size - crop_size, self.w) + self.w)
        self.maps = {}  # image id -> full[0] x full[1] float tensor, CPU
        self._pending = []  # (ids, where rows, maps on CPU, CUDA event or None)

    def _cell(self, pixels, cells):
        return int(round(pixels * cells / self.crop_size))

    def _window(self, top, left):
        y, x = self._cell(top, self.h), self._cell(left, self.w)
        return slice(y, y + self.h), slice(x, x + self.w)

    def write(self, ids, where, M):
        """Store M (N x 1 x h x w, any device) for images ids cut at where (N x 3: top, left, flip)."""
        M = M.detach().float()
        if M.is_cuda:  # into pinned memory, finished when the event on the stream of M's own GPU fires
            cpu = M.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(M.device))
        else:
            cpu, event = M.to("cpu", copy=True), None
        self._pending.append((list(ids), where.tolist(), cpu, event))

    def _settle(self, needed=()):
        """Paste finished writes into the maps; wait only for writes of the images in needed."""
        needed = set(needed)
        last_needed = max((i for i, p in enumerate(self._pending) if needed & set(p[0])), default=-1)
        done = 0
        for i, (ids, rows, M, event) in enumerate(self._pending):
            if event is not None:
                if i <= last_needed:
                    event.synchronize()
                elif not event.query():
                    break
            for img_id, (top, left, flip), m in zip(ids, rows, M[:, 0]):
                full = self.maps.setdefault(img_id, torch.ones(self.full))
                full[self._window(top, left)] = m.flip(-1) if flip else m
            done = i + 1
        del self._pending[:done]

    def read(self, ids, where, device):
        """M^(k) for images ids cut at where: N x 1 x h x w on device (ones where never seen)."""
        self._settle(ids)
        device = torch.device(device)
        out = torch.ones(len(ids), 1, self.h, self.w, pin_memory=device.type == "cuda")
        for i, (img_id, (top, left, flip)) in enumerate(zip(ids, where.tolist())):
            full = self.maps.get(img_id)
            if full is not None:
                m = full[self._window(top, left)]
                out[i, 0] = m.flip(-1) if flip else m
        return to_device(out, device)

    def state_dict(self):
        self._settle([i for p in self._pending for i in p[0]])
        return {"maps": dict(self.maps), "geometry": [self.load_size, self.crop_size, self.h, self.w]}

    def load_state_dict(self, state):
        geometry = [self.load_size, self.crop_size, self.h, self.w]
        if list(state["geometry"]) != geometry:
            raise ValueError(f"attention bank geometry (load, crop, map h, map w) {list(state['geometry'])} "
                             f"does not match {geometry}")
        self.maps, self._pending = dict(state["maps"]), []


# ------------------------------------------------------------------------------------------------
# Sec 4.1.3: scores
# ------------------------------------------------------------------------------------------------

def kernel_inception_distance(real_features, fake_features, subsets=100, subset_size=1000, seed=0):
    """KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3,
    averaged over `subsets` random subsets of `subset_size` samples from each set. Returns (mean, std);
    papers report both x 100. When a set has fewer than subset_size samples, the subsets take half
    of the smaller set: subsets of a whole set would all be that set, and their std a meaningless 0."""
    real, fake = real_features.double(), fake_features.double()
    d = real.shape[1]
    n = min(len(real), len(fake))
    m = subset_size if subset_size <= n else n // 2
    if m < 2:
        raise ValueError(f"KID needs at least {2 if subset_size <= n else 4} samples in each set, got {n}")
    g = torch.Generator().manual_seed(seed)
    off_diagonal_mean = lambda k: (k.sum() - k.diagonal().sum()) / (m * (m - 1))
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=g)[:m]]
        y = fake[torch.randperm(len(fake), generator=g)[:m]]
        kxx, kyy, kxy = [(a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
        values.append((off_diagonal_mean(kxx) + off_diagonal_mean(kyy) - 2 * kxy.mean()).item())
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


class InceptionUnavailable(RuntimeError):
    """The Inception v3 weights could not be had (no network, no cached file)."""


def inception_model(device):
    """torchvision's Inception v3 with its classifier removed: N x 3 x 299 x 299 -> N x 2048."""
    from torchvision.models import Inception_V3_Weights, inception_v3
    try:
        net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1)
    except Exception as e:  # URLError, timeout, truncated file: all mean "no weights here"
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise InceptionUnavailable(
            f"KID skipped: the Inception v3 weights could not be loaded ({type(e).__name__}: {e}). They download "
            f"once into {hub}; on a machine without network copy inception_v3_google-0cc3c7bd.pth there.") from e
    net.fc = nn.Identity()
    return net.eval().to(device)


@torch.no_grad()
def inception_features(net, images):
    """Pool features of images (N x 3 x H x W in [-1, 1]) -> N x 2048."""
    x = nnf.interpolate((images + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    return net((x - mean) / std).float()


def nearest_palette_labels(images, palette):
    """Label map of each pixel by its nearest palette colour (the FCN-score protocol for outputs
    that are colour label maps). images N x 3 x H x W in [-1, 1], palette K x 3 (0..255) -> N x H x W."""
    colours = torch.as_tensor(palette, dtype=torch.float32, device=images.device) / 127.5 - 1  # K x 3
    dist = ((images.unsqueeze(1) - colours.view(1, -1, 3, 1, 1)) ** 2).sum(2)  # N x K x H x W
    return dist.argmin(1)


IGNORE = 255  # the truth label of void pixels (unlabeled, ego vehicle, ...): not scored


def exact_palette_labels(images, palette):
    """Truth label map of colour label images: the palette index of pixels whose 8-bit colour is exactly
    a palette colour, IGNORE elsewhere (void classes, blended boundaries). The FCN-score protocol scores
    only pixels of the evaluated classes. images N x 3 x H x W in [-1, 1] -> N x H x W (long)."""
    rgb = ((images + 1) * 127.5).round().long()  # N x 3 x H x W, 0..255
    code = (rgb[:, 0] * 256 + rgb[:, 1]) * 256 + rgb[:, 2]
    labels = torch.full_like(code, IGNORE)
    for k, (r, g, b) in enumerate(palette):
        labels[code == (r * 256 + g) * 256 + b] = k
    return labels


def segmentation_scores(pred, truth, n_classes):
    """Per-pixel accuracy, per-class accuracy and mean IoU (pix2pix / FCN-score definitions) over the
    pixels whose truth is a class in [0, n_classes) (void, IGNORE, is skipped): classes absent from the
    truth have no accuracy; classes absent from both have no IoU."""
    truth, pred = truth.flatten().long(), pred.flatten().long()
    scored = (truth >= 0) & (truth < n_classes)
    hist = torch.bincount(truth[scored] * n_classes + pred[scored],
                          minlength=n_classes ** 2).view(n_classes, n_classes).double()  # truth x pred
    tp, in_truth, in_pred = hist.diagonal(), hist.sum(1), hist.sum(0)
    present = in_truth > 0
    union = in_truth + in_pred - tp
    return {"pixel_acc": (tp.sum() / hist.sum()).item(),
            "class_acc": (tp[present] / in_truth[present]).mean().item(),
            "mean_iou": (tp[union > 0] / union[union > 0]).mean().item()}


def psnr(fake, target):
    """Peak signal-to-noise ratio in dB on the [0, 1] scale, per image, averaged. Inputs in [-1, 1]."""
    mse = (((fake - target) / 2) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()


def truth_distances(fake, source, truth, mask):
    """Scores for the synthetic sets, whose true translation is known: mean L1 of the translation
    and of the untranslated input to the truth, overall and inside / outside the object mask.
    fake, source, truth: N x 3 x H x W in [-1, 1]; mask: N x 1 x H x W bool."""
    out = {}
    for name, img in (("truth", fake), ("input", source)):
        err = (img - truth).abs().mean(1, keepdim=True)  # N x 1 x H x W
        out[f"l1_{name}"] = err.mean().item()
        out[f"l1_{name}_object"] = err[mask].mean().item() if mask.any() else float("nan")
        out[f"l1_{name}_background"] = err[~mask].mean().item() if (~mask).any() else float("nan")
    return out


# ------------------------------------------------------------------------------------------------
# Training machinery shared by train_unpaired.py and train_supervised.py
# ------------------------------------------------------------------------------------------------

def pick_device(name="auto"):
    """'auto' takes CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    return device


def to_device(t, device):
    """Copy a CPU tensor to device: asynchronously only from pinned memory. From pageable memory a
    non-blocking copy can read the source after it is freed (MPS), and gains nothing on CUDA."""
    return t.to(device, non_blocking=t.device.type == "cpu" and t.is_pinned())


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def linear_decay(optimizer, epochs, epochs_decay):
    """Sec 4.1.4: the learning rate stays for `epochs` epochs, then falls linearly to zero over
    `epochs_decay` more (CycleGAN's 'linear' policy). Stepped once per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 1.0 - max(0, e + 1 - epochs) / float(epochs_decay + 1))


def adam(params, lr):
    """Sec 4.1.4: Adam, betas (0.5, 0.999)."""
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


def save_checkpoint(state, path):
    """Write atomically: a crash while saving leaves the previous checkpoint loadable."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointMismatch(ValueError):
    pass


def load_checkpoint(path, options, must_match):
    """Load a checkpoint (weights_only) and check that the options in must_match agree with it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointMismatch(f"no checkpoint at {path}: train first (without --resume / --test-only)") from None
    except Exception as e:
        raise CheckpointMismatch(f"{path} is not a loadable checkpoint ({type(e).__name__}: {e})") from e
    saved = state.get("options", {})
    for key in must_match:
        if key in saved and saved[key] != options[key]:
            flag = "--" + key.replace("_", "-")
            raise CheckpointMismatch(
                f"{flag} is {options[key]!r} but the checkpoint {path} was made with {flag} {saved[key]!r}: "
                f"pass {flag} {saved[key]} to use it, or a new --name to start a fresh run")
    return state


class StopFlag:
    """Turns Ctrl-C / SIGTERM into a flag the loop checks between steps, so it can save and exit."""

    def __init__(self):
        self.stop = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.stop:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


class LossLog:
    """losses.csv, one row per step. Loss tensors stay on the device and are fetched every
    `every` steps in one transfer, so logging adds no per-step host-device sync. A resumed run
    keeps the rows up to its checkpoint's step and drops any logged after it."""

    def __init__(self, path, names, every=25, resume_step=None):
        self.path, self.names, self.every, self.rows = Path(path), list(names), every, []
        header = ",".join(["step"] + self.names)
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [r for r in self.path.read_text().splitlines()[1:] if int(r.split(",")[0]) <= resume_step]
        self.path.write_text("\n".join([header] + kept) + "\n")
        self.last = {}

    def add(self, step, losses):
        self.rows.append((step, torch.stack([losses[n].detach().float() for n in self.names])))
        if len(self.rows) >= self.every:
            self.flush()

    def flush(self):
        if not self.rows:
            return
        values = torch.stack([r[1] for r in self.rows]).tolist()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            for (step, _), row in zip(self.rows, values):
                w.writerow([step] + [f"{v:.5g}" for v in row])
        self.last = dict(zip(self.names, values[-1]))
        self.rows = []


def setup(opt):
    """Device, default workers, seeds: the first lines of both scripts' main()."""
    device = pick_device(opt.device)
    if opt.workers is None:
        opt.workers = 4 if device.type == "cuda" else 0
    seed_everything(opt.seed)
    torch.backends.cudnn.benchmark = True
    return device


def benchmark(model, opt, make_batch, warmup=3):
    """--benchmark N: the median wall time in ms of N training steps on random tensors, after warm-up
    steps. Image ids repeat every 16 steps so the bank is read and written as in training. The
    device is synchronised around each timed step, which only the benchmark does."""
    n, c = opt.batch_size, opt.crop_size
    g = torch.Generator().manual_seed(opt.seed)
    images = [torch.rand(n, 3, c, c, generator=g) * 2 - 1 for _ in range(8)]
    where = torch.zeros(n, 3, dtype=torch.long)
    sync = (lambda: torch.cuda.synchronize(model.device)) if model.device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + opt.benchmark):
        ids = [f"bench/{(i * n + k) % 16}" for k in range(n)]
        batch = make_batch(images[i % 8], images[(i + 3) % 8], ids, where)
        sync()
        t = time.perf_counter()
        model.train_step(batch)
        sync()
        times.append((time.perf_counter() - t) * 1000)
    median = statistics.median(times[warmup:])
    print(f"step_ms={median:.1f}")
    return median


def add_common_options(p):
    """The options both training scripts take (names as in pytorch-CycleGAN-and-pix2pix where it
    has them). Options left at None are filled from the script's preset (paper or synthetic)."""
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (built in, the default), a dataset name (downloaded into datasets/), or a folder")
    p.add_argument("--name", help="run folder runs/NAME (default: DATA_ATTENTION_CONCAT)")
    p.add_argument("--attention", choices=ATTENTIONS, default="pha",
                   help="D's attention: post hoc (Eq. 2), trainable module (Eq. 3), or none = the plain baseline")
    p.add_argument("--pha-layer", type=int, default=4, help="the conv layer of D that PHA reads (paper: 4)")
    p.add_argument("--concat", choices=CONCATS, default="rhp", help="RHP (Eq. 4) or alpha channel (Eq. 5)")
    p.add_argument("--transfer", choices=TRANSFERS, default="learned",
                   help="the weight map G gets: learned = T(M) (the paper), raw = the upsampled map (the authors' "
                        "unpaired code), flat = 0.5 everywhere (control: the same gain without attention)")
    p.add_argument("--gan-mode", choices=GAN_MODES, default="lsgan", help="LSGAN (Eq. 7) or vanilla GAN (Eq. 6)")
    p.add_argument("--ngf", type=int, help="generator width (paper: 64)")
    p.add_argument("--ndf", type=int, help="discriminator width (paper: 64)")
    p.add_argument("--load-size", type=int, help="resize to this before the random crop (paper: 286)")
    p.add_argument("--crop-size", type=int, help="training crop and test size (paper: 256)")
    p.add_argument("--batch-size", type=int, help="paper: 1")
    p.add_argument("--epochs", type=int, help="epochs at the initial learning rate (paper: 100)")
    p.add_argument("--epochs-decay", type=int, help="epochs of linear decay to zero after those (paper: 100)")
    p.add_argument("--lr", type=float, help="Adam learning rate (paper: 2e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA (not the paper's setting)")
    p.add_argument("--workers", type=int, help="data loading processes (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in all (quick looks, tests)")
    p.add_argument("--sample-every", type=int, help="steps between sample grids")
    p.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (also at epoch ends)")
    p.add_argument("--snapshot-every", type=int, metavar="N",
                   help="every N epochs keep snapshots/epoch_NNN.pt (generators and T) and add the test score to "
                        "scores.csv; 0: none")
    p.add_argument("--epoch", type=int, metavar="N", help="--test-only / --translate with the snapshot of epoch N")
    p.add_argument("--resume", action="store_true", help="continue runs/NAME from its checkpoint")
    p.add_argument("--test-only", action="store_true", help="run the test phase alone from runs/NAME's checkpoint")
    p.add_argument("--translate", metavar="PATH",
                   help="translate an image, or every image of a folder, at its own size into runs/NAME/translated/")
    p.add_argument("--translate-size", type=int, metavar="N",
                   help="with --translate: resize each image's shorter side to N first (the training scale)")
    p.add_argument("--benchmark", type=int, metavar="N",
                   help="time N training steps on random tensors, print step_ms=<median>, write nothing")
    return p


def given_options(p, argv):
    """The options given on the command line, as opposed to left at their defaults (their dests)."""
    defaults = {a.dest: a.default for a in p._actions}
    for a in p._actions:
        a.default = argparse.SUPPRESS
    try:
        return set(vars(p.parse_args(argv)))
    finally:
        for a in p._actions:
            a.default = defaults[a.dest]


def adopt_run_options(opt, keys, given):
    """--test-only and --translate take the network and data options (keys) from the run's options.json,
    so the training command need not be repeated; one given that contradicts the run is refused by name."""
    path = Path("runs") / opt.name / "options.json"
    if not path.exists():
        return  # start_run says that there is no such run
    saved = json.loads(path.read_text())
    for key in keys:
        if key not in saved:
            continue
        if key in given and getattr(opt, key) != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise CheckpointMismatch(f"{flag} is {getattr(opt, key)!r} but the run {path.parent} was made with {flag} "
                                     f"{saved[key]!r}: leave {flag} out to use the run's, or pick another --name")
        setattr(opt, key, saved[key])


def finish_options(p, argv, presets, name_parts=(), adopt=()):
    """Parse, then fill the options left unset from the preset: 'synthetic' for the built-in set,
    'paper' (Sec 4.1.4) for everything else. The default --name joins the data, the attention,
    the concatenation and name_parts. With --test-only or --translate, the options in adopt come
    from the run itself (adopt_run_options)."""
    opt = p.parse_args(argv)
    preset = presets["synthetic" if opt.data == "synthetic" else "paper"]
    for key, value in preset.items():
        if getattr(opt, key) is None:
            setattr(opt, key, value)
    if opt.name is None:
        parts = [Path(opt.data).name, opt.attention]
        if opt.attention != "none":
            parts += [opt.concat] + ([opt.transfer] if opt.transfer != "learned" else [])
        opt.name = "_".join(parts + [str(getattr(opt, k)) for k in name_parts])
    for key in ("ngf", "ndf", "crop_size", "batch_size", "epochs_decay", "sample_every", "save_every", "snapshot_every"):
        if getattr(opt, key) is not None and getattr(opt, key) < (0 if key in ("epochs_decay", "snapshot_every") else 1):
            p.error(f"--{key.replace('_', '-')} must be positive, got {getattr(opt, key)}")
    if opt.epoch is not None and not (opt.test_only or opt.translate):
        p.error("--epoch picks a snapshot for --test-only or --translate")
    if opt.test_only or opt.translate:
        adopt_run_options(opt, adopt, given_options(p, argv))
    if opt.load_size < opt.crop_size:
        p.error(f"--load-size ({opt.load_size}) must be at least --crop-size ({opt.crop_size})")
    return opt


def fit(model, opt, run, progress, batches, per_epoch, pictures, score=None):
    """The loop both scripts share: epochs of a seeded, resumable order; model.train_step on each
    batch; losses to CSV and tqdm; pictures; checkpoints; the learning-rate step at each epoch's end;
    every --snapshot-every epochs a snapshot and score(), the test scores, into scores.csv; Ctrl-C saves
    and stops. Returns True when training ran to its end. The files come from the caller
    (data.training_io): batches(epoch, position) gives an epoch's batches from a position on,
    per_epoch how many there are, pictures(step) draws the samples and curves of a step."""
    from tqdm import tqdm
    total_epochs = opt.epochs + opt.epochs_decay
    last = min(opt.max_steps or per_epoch * total_epochs, per_epoch * total_epochs)
    log = LossLog(run / "losses.csv", model.loss_names, every=min(25, opt.sample_every),
                  resume_step=progress["step"] if opt.resume else None)
    bar = tqdm(total=last, initial=progress["step"], desc=opt.name, unit="step", dynamic_ncols=True)

    def save():
        log.flush()
        save_checkpoint({**model.state_dict(), **progress, "options": vars(opt), "rng": rng_state()},
                        run / "checkpoint.pt")

    def draw():
        log.flush()  # the curves include this step
        pictures(progress["step"])

    with StopFlag() as flag:
        while progress["step"] < last and not flag.stop:
            for batch in batches(progress["epoch"], progress["position"]):
                losses = model.train_step(batch)
                progress["step"] += 1
                progress["position"] += 1
                log.add(progress["step"], losses)
                bar.update(1)
                if progress["step"] % log.every == 0:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in log.last.items()}, refresh=False)
                if progress["step"] % opt.sample_every == 0:
                    draw()
                if progress["step"] % opt.save_every == 0:
                    save()
                if progress["step"] >= last or flag.stop:
                    break
            if progress["position"] >= per_epoch:  # the epoch is complete
                progress["epoch"] += 1
                progress["position"] = 0
                model.end_epoch()
                save()
                if opt.snapshot_every and progress["epoch"] % opt.snapshot_every == 0:
                    snapshot(model, opt, run, progress, score)
        bar.close()
        save()
        draw()
        if flag.stop:
            print(f"stopped at step {progress['step']}; checkpoint saved in {run / 'checkpoint.pt'}: "
                  f"continue with the same command and --resume")
            return False
    return True


def snapshot(model, opt, run, progress, score=None):
    """snapshots/epoch_NNN.pt holds what the test phase needs (the generators and T: no D, no optimiser
    state), and scores.csv gets a row of score()'s numbers: the test split's scores, as the CycleGAN
    literature picks epochs. score runs on a fork of the RNG and the networks' buffers are put back,
    so training goes on as if it had not run.
    A resumed run replaces the rows of its epochs."""
    epoch = progress["epoch"]
    path = run / "snapshots" / f"epoch_{epoch:03d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({**model.snapshot_state(), "epoch": epoch, "step": progress["step"], "options": vars(opt)}, path)
    if score is None:
        return
    # pix2pix tests in training mode, which moves batch norm's running statistics: keep them as they were
    nets = [m for m in vars(model).values() if isinstance(m, nn.Module)]
    buffers = [{k: b.clone() for k, b in net.named_buffers()} for net in nets]
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        metrics = score()
    for net, saved in zip(nets, buffers):
        for k, b in net.named_buffers():
            b.copy_(saved[k])
    row = {"epoch": epoch, "step": progress["step"],
           **{f"{d}_{k}": v for d, m in metrics.items() for k, v in m.items() if isinstance(v, (int, float))}}
    scores = run / "scores.csv"
    rows = []
    if scores.exists():
        with open(scores, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < epoch]
    rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(scores, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def epoch_suffix(opt):
    """'_epoch_NNN' for outputs made from a snapshot (--epoch N), '' for the run's last state."""
    return f"_epoch_{opt.epoch:03d}" if getattr(opt, "epoch", None) else ""


def start_run(opt, model, must_match, objective=()):
    """Open runs/NAME: a new run refuses to overwrite an old one; --resume, --test-only and
    --translate load its checkpoint (options checked against must_match, and for --resume also
    against objective: the options of the loss, which a resumed run must keep). Returns the progress."""
    run = Path("runs") / opt.name
    ckpt = run / "checkpoint.pt"
    progress = {"step": 0, "epoch": 0, "position": 0}
    if opt.epoch:  # a snapshot, for --test-only or --translate
        path = run / "snapshots" / f"epoch_{opt.epoch:03d}.pt"
        if not path.exists():
            there = sorted(int(p.stem[6:]) for p in run.glob("snapshots/epoch_*.pt"))
            raise CheckpointMismatch(f"no snapshot of --epoch {opt.epoch} in {run / 'snapshots'}: "
                                     + (f"there are epochs {', '.join(map(str, there))}" if there else
                                        "this run has none (see --snapshot-every)"))
        model.load_snapshot(load_checkpoint(path, vars(opt), must_match))
    elif opt.resume or opt.test_only or opt.translate:
        state = load_checkpoint(ckpt, vars(opt), list(must_match) + (list(objective) if opt.resume else []))
        model.load_state_dict(state)
        progress = {k: state[k] for k in progress}
        if opt.resume:
            set_rng_state(state["rng"])
    elif ckpt.exists():
        raise CheckpointMismatch(f"{run} already holds a run: add --resume to continue it, --test-only to test it, "
                                 f"or pick another --name")
    run.mkdir(parents=True, exist_ok=True)
    if not (opt.test_only or opt.translate):
        (run / "options.json").write_text(json.dumps(vars(opt), indent=2) + "\n")
    return run, progress


def autocast(opt, device):
    """bfloat16 autocast when --amp on CUDA (no loss scaling needed), else a no-op context."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(opt.amp and device.type == "cuda"))


def set_requires_grad(nets, flag):
    """D is frozen during the generator step, so G's backward computes no gradients for D."""
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)
