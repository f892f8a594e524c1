"""Fast offline tests. Each names the equation or the behaviour it pins. Run: python -m pytest -q test_asgit.py

Sections: asgit.py (networks, T and concatenations, losses, bank, scores, machinery), data.py
(reading, transforms, datasets, synthetic sets, downloads, pictures), then the two training scripts.
Everything runs on tiny images in tmp_path; the only network use is an http.server on 127.0.0.1.
"""

import csv
import functools
import hashlib
import http.server
import io
import json
import math
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import asgit
import data
import train_supervised
import train_unpaired

torch.set_num_threads(2)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------------
# asgit.py: networks (Sec 3.2, 3.3)
# ------------------------------------------------------------------------------------------------

def test_networks_match_pytorch_cyclegan_and_pix2pix_parameter_counts():
    # the counts that repository prints for resnet_9blocks, resnet_6blocks, unet_256, unet_128 and
    # the 70x70 PatchGAN (3 and 6 input channels): same layers, same biases
    assert n_params(asgit.ResnetGenerator(3, 3, 64, 9)) == 11378179
    assert n_params(asgit.ResnetGenerator(3, 3, 64, 6)) == 7837699
    assert n_params(asgit.UnetGenerator(3, 3, 8)) == 54413955
    assert n_params(asgit.UnetGenerator(3, 3, 7)) == 41828995
    assert n_params(asgit.PatchDiscriminator(3, attention="none")) == 2764737
    assert n_params(asgit.PatchDiscriminator(6, attention="pha")) == 2767809  # PHA adds nothing


@pytest.mark.parametrize("size", [256, 128])
def test_generator_and_discriminator_shapes(size):
    x = torch.randn(1, 4, size, size)
    with torch.no_grad():
        assert asgit.ResnetGenerator(4, 3, ngf=8, n_blocks=2)(x).shape == (1, 3, size, size)
        u = asgit.UnetGenerator(4, 3, num_downs=asgit.unet_downs_for(size), ngf=4).eval()
        y = u(x)
        assert y.shape == (1, 3, size, size) and y.abs().max() <= 1
        pred, M = asgit.PatchDiscriminator(3, ndf=8)(x[:, :3])
        patch = size // 8 - 2
        assert pred.shape == (1, 1, patch, patch) and M.shape == (1, 1, patch + 1, patch + 1)
        pred, M = asgit.PatchDiscriminator(6, ndf=8, attention="tam")(torch.randn(1, 6, size, size))
        assert pred.shape == (1, 1, patch, patch) and M.shape == (1, 1, size // 4, size // 4)
        assert asgit.PatchDiscriminator(3, ndf=8, attention="none")(x[:, :3])[1] is None


def test_pha_map_of_the_4th_conv_is_31x31_at_256_and_in_unit_range():
    D = asgit.PatchDiscriminator(3, ndf=4)
    assert D.map_size(256) == (31, 31)
    _, M = D(torch.randn(2, 3, 256, 256))
    for m in M:  # per-image min-max: each image spans exactly [0, 1]
        assert m.min().item() == 0 and abs(m.max().item() - 1) < 1e-6
    assert asgit.PatchDiscriminator(3, ndf=4, pha_layer=3).map_size(256) == (32, 32)
    with pytest.raises(ValueError, match="pha-layer"):
        asgit.PatchDiscriminator(3, pha_layer=6)


def test_unet_rejects_sizes_it_cannot_take_with_a_clear_message():
    with pytest.raises(ValueError, match="divisible by 256"):
        asgit.UnetGenerator(3, 3, num_downs=8, ngf=4)(torch.zeros(1, 3, 200, 200))
    with pytest.raises(ValueError, match="crop-size 100"):
        asgit.unet_downs_for(100)
    assert asgit.unet_downs_for(128) == 7 and asgit.unet_downs_for(64) == 6


def test_eq2_pha_formula_by_hand():
    a = torch.tensor([[[[2.0, 0.0], [1.0, 0.0]], [[-2.0, 3.0], [1.0, 0.0]]]])  # 1 x 2 x 2 x 2
    # channel mean of |a|: [[2, 1.5], [1, 0]] -> min-max: [[1, 0.75], [0.5, 0]]
    # (the channel max would give [[2/3, 1], [1/3, 0]], the mean without |.| [[0, 1], [2/3, 0]])
    assert torch.allclose(asgit.post_hoc_attention(a), torch.tensor([[[[1.0, 0.75], [0.5, 0.0]]]]))
    flat = asgit.post_hoc_attention(torch.full((1, 3, 4, 4), 2.0))
    assert torch.equal(flat, torch.ones(1, 1, 4, 4))  # a flat map: no division by zero


def test_eq3_tam_formula():
    tam = asgit.TrainableAttention(2, asgit.norm_layer("none"))
    x = torch.randn(1, 2, 5, 5)
    E, M = tam(x)
    A, trunk = tam.mask(x), tam.trunk(x)
    assert torch.allclose(E, (A + 1) * trunk)
    assert torch.allclose(M, A.mean(1, keepdim=True)) and 0 <= M.min() and M.max() <= 1
    # inside D, the layers after TAM work on E, and M is TAM's map
    D = asgit.PatchDiscriminator(3, ndf=4, attention="tam").eval()
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        h = D.convs[1](D.convs[0](img))
        E, M = D.tam(h)
        for conv in D.convs[2:]:
            E = conv(E)
        pred, M_D = D(img)
    assert torch.allclose(pred, E) and torch.allclose(M_D, M)


# ------------------------------------------------------------------------------------------------
# asgit.py: T and the concatenations (Sec 3.4)
# ------------------------------------------------------------------------------------------------

def test_eq4_rhp_and_eq5_alpha_by_hand():
    x = torch.tensor([1.0, -0.5, 0.25]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    w = torch.tensor([[0.0, 1.0], [0.5, 0.25]]).view(1, 1, 2, 2)
    expected_rhp = torch.tensor([[[1.0, 2.0], [1.5, 1.25]], [[-0.5, -1.0], [-0.75, -0.625]],
                                 [[0.25, 0.5], [0.375, 0.3125]]]).unsqueeze(0)
    assert torch.allclose(asgit.rhp(x, w), expected_rhp)
    a = asgit.alpha(x, w)
    assert a.shape == (1, 4, 2, 2) and torch.equal(a[:, :3], x) and torch.equal(a[:, 3:], w)


def test_attention_transfer_block_shapes_and_flat_placeholder():
    T = asgit.AttentionTransfer()
    assert len([m for m in T.modules() if isinstance(m, torch.nn.Conv2d)]) == 3
    w = T(torch.rand(2, 1, 31, 31), (256, 256))
    assert w.shape == (2, 1, 256, 256) and 0 < w.min() and w.max() < 1
    flat = T(asgit.placeholder_map(1, (31, 31), "cpu"), (64, 64))
    assert torch.allclose(flat, flat.flatten()[0].expand_as(flat))  # all-ones map -> flat weight


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_T_follows_the_map_from_the_first_step(seed):
    # a min-max normalised map with one bright blob, as PHA gives: T(M) must carry it to the image
    torch.manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(31.0), torch.arange(31.0), indexing="ij")
    blob = torch.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 32)
    M = ((blob - blob.min()) / (blob.max() - blob.min())).view(1, 1, 31, 31)
    with torch.no_grad():
        w = asgit.AttentionTransfer()(M, (256, 256))
    up = asgit.upsample(M, (256, 256))
    assert torch.corrcoef(torch.stack([w.flatten(), up.flatten()]))[0, 1] >= 0.9
    assert w.max() - w.min() >= 0.5 and math.isclose(asgit.weight_range(w).item(), (w.max() - w.min()).item())


def test_weight_map_learned_raw_and_flat_and_its_range_by_hand():
    M = torch.tensor([[0.0, 1.0], [0.5, 0.25]]).view(1, 1, 2, 2)
    T = asgit.AttentionTransfer()
    assert torch.equal(asgit.weight_map(T, M, (2, 2), "learned"), T(M, (2, 2)))
    assert torch.equal(asgit.weight_map(None, M, (2, 2), "raw"), M)  # same size: the map itself
    assert torch.allclose(asgit.weight_map(None, M, (4, 4), "raw"), nnf_interpolate(M, 4))
    assert torch.equal(asgit.weight_map(None, M, (4, 4), "flat"), torch.full((1, 1, 4, 4), 0.5))
    two = torch.stack([M[0], torch.full((1, 2, 2), 0.3)])  # ranges 1 and 0
    assert math.isclose(asgit.weight_range(two).item(), 0.5)
    with pytest.raises(ValueError, match="--transfer"):
        asgit.weight_map(None, M, (2, 2), "none")


def nnf_interpolate(M, size):
    return torch.nn.functional.interpolate(M, size=(size, size), mode="bilinear", align_corners=False)


def test_join_none_is_plain_input_and_channels():
    x = torch.randn(1, 3, 8, 8)
    assert asgit.join(x, None, "rhp") is x
    w = asgit.AttentionTransfer()(torch.rand(1, 1, 3, 3), (8, 8))
    assert torch.equal(asgit.join(x, w, "rhp"), (w + 1) * x)
    assert asgit.join(x, w, "alpha").shape == (1, 4, 8, 8)
    assert asgit.generator_channels("pha", "alpha") == 4
    assert asgit.generator_channels("none", "alpha") == 3 and asgit.generator_channels("tam", "rhp") == 3


# ------------------------------------------------------------------------------------------------
# asgit.py: losses (Sec 3.5)
# ------------------------------------------------------------------------------------------------

def test_eq7_lsgan_and_eq6_vanilla_by_hand():
    p = torch.tensor([0.5, 2.0])
    assert math.isclose(asgit.gan_loss(p, True, "lsgan").item(), (0.25 + 1.0) / 2)
    assert math.isclose(asgit.gan_loss(p, False, "lsgan").item(), (0.25 + 4.0) / 2)
    sig = lambda v: 1 / (1 + math.exp(-v))
    assert math.isclose(asgit.gan_loss(p, True, "vanilla").item(),
                        -(math.log(sig(0.5)) + math.log(sig(2.0))) / 2, rel_tol=1e-6)
    assert math.isclose(asgit.gan_loss(p, False, "vanilla").item(),
                        -(math.log(1 - sig(0.5)) + math.log(1 - sig(2.0))) / 2, rel_tol=1e-6)
    # D's loss is half the sum of its real and fake terms
    real, fake = torch.tensor([0.8]), torch.tensor([0.3])
    assert math.isclose(asgit.discriminator_loss(real, fake).item(), 0.5 * (0.04 + 0.09), rel_tol=1e-6)
    with pytest.raises(ValueError, match="gan-mode"):
        asgit.gan_loss(p, True, "wgan")


def test_eq8_l1_and_eq10_cycle_by_hand():
    y = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    g = torch.tensor([[0.5, 0.5], [0.5, 1.0]])
    assert math.isclose(asgit.l1_loss(g, y).item(), (0.5 + 0.5 + 0 + 2) / 4)
    assert math.isclose(asgit.cycle_loss(y, g).item(), 0.75)
    assert math.isclose(asgit.identity_loss(y, g).item(), 0.75)


def test_image_pool_returns_past_fakes_and_resumes_identically():
    pool = asgit.ImagePool(size=2, seed=1)
    a, b = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert torch.equal(pool.query(a), a) and torch.equal(pool.query(b), b)  # filling: returned as is
    state = pool.state_dict()
    seen = [pool.query(torch.full((1, 3, 2, 2), float(i))) for i in range(2, 20)]
    assert any(s[0, 0, 0, 0] < 2 for s in seen)  # some queries return an older image
    again = asgit.ImagePool(size=2, seed=99)
    again.load_state_dict(state, "cpu")
    assert all(torch.equal(s, again.query(torch.full((1, 3, 2, 2), float(i)))) for i, s in enumerate(seen, 2))
    assert asgit.ImagePool(size=0).query(a) is a


# ------------------------------------------------------------------------------------------------
# asgit.py: the feedback bank (Eq. 1)
# ------------------------------------------------------------------------------------------------

def where(top, left, flip):
    return torch.tensor([[top, left, flip]])


def test_bank_all_ones_at_first_then_returns_what_was_written():
    bank = asgit.AttentionBank(load_size=10, crop_size=8, map_size=(4, 4))
    assert torch.equal(bank.read(["a"], where(0, 0, 0), "cpu"), torch.ones(1, 1, 4, 4))
    M = torch.rand(1, 1, 4, 4)
    bank.write(["a"], where(2, 2, 0), M)
    assert torch.equal(bank.read(["a"], where(2, 2, 0), "cpu"), M)
    assert torch.equal(bank.read(["b"], where(2, 2, 0), "cpu"), torch.ones(1, 1, 4, 4))  # per image


def test_bank_moves_the_map_with_the_crop_and_flip():
    # crop 8 of a 12 image, map 4x4: one map cell is 2 pixels. Write under crop (0, 0) unflipped,
    # read under crop (2, 4) flipped: the overlap must come back at the shifted, mirrored place.
    bank = asgit.AttentionBank(load_size=12, crop_size=8, map_size=(4, 4))
    M = torch.arange(16.0).view(1, 1, 4, 4) / 16
    bank.write(["img"], where(0, 0, 0), M)
    got = bank.read(["img"], where(2, 4, 1), "cpu")[0, 0]
    # window rows 1..4 and cols 2..5 of the whole-image map; cols 2, 3 and rows 1..3 were written
    expected = torch.ones(4, 4)
    expected[:3, :2] = M[0, 0, 1:, 2:]
    assert torch.equal(got, expected.flip(-1))
    # a map written flipped is stored unflipped: read back unflipped it is mirrored
    bank.write(["f"], where(0, 0, 1), M)
    assert torch.equal(bank.read(["f"], where(0, 0, 0), "cpu"), M.flip(-1))


def test_bank_stores_no_gradient_and_survives_save_and_load(tmp_path):
    bank = asgit.AttentionBank(load_size=8, crop_size=8, map_size=(3, 3))
    M = torch.rand(2, 1, 3, 3, requires_grad=True)
    bank.write(["a", "b"], torch.zeros(2, 3, dtype=torch.long), M * 2)
    read = bank.read(["b", "a"], torch.zeros(2, 3, dtype=torch.long), "cpu")
    assert not read.requires_grad and torch.allclose(read, (M * 2).detach()[[1, 0]])
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    again = asgit.AttentionBank(load_size=8, crop_size=8, map_size=(3, 3))
    again.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    assert torch.equal(again.read(["a"], torch.zeros(1, 3, dtype=torch.long), "cpu"), read[1:])
    with pytest.raises(ValueError, match="geometry"):
        asgit.AttentionBank(load_size=9, crop_size=8, map_size=(3, 3)).load_state_dict(bank.state_dict())


def test_bank_copies_from_a_gpu_finish_on_that_gpus_stream(monkeypatch):
    # no GPU needed: a stand-in for a map on cuda:1 and for CUDA's events and streams
    recorded = []

    class Event:
        def record(self, stream=None):
            recorded.append(stream)

        def synchronize(self):
            pass

    class MapOnSecondGPU:
        is_cuda, device = True, torch.device("cuda", 1)

        def detach(self):
            return self

        def float(self):
            return self

        def to(self, device, non_blocking=False):
            return torch.full((1, 1, 4, 4), 0.5)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream of", torch.device(device)))
    bank = asgit.AttentionBank(load_size=8, crop_size=8, map_size=(4, 4))
    bank.write(["a"], where(0, 0, 0), MapOnSecondGPU())
    assert recorded == [("stream of", torch.device("cuda", 1))]
    assert torch.equal(bank.read(["a"], where(0, 0, 0), "cpu"), torch.full((1, 1, 4, 4), 0.5))
    # the benchmark waits for the model's own GPU
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    model = type("Model", (), {"device": torch.device("cuda", 1), "train_step": lambda self, batch: None})()
    opt = type("Options", (), {"batch_size": 1, "crop_size": 8, "seed": 0, "benchmark": 2})()
    asgit.benchmark(model, opt, lambda a, b, ids, w: {}, warmup=1)
    assert synced and all(d == torch.device("cuda", 1) for d in synced)


def test_no_asynchronous_copy_from_pageable_memory(objects_set, labels_set, monkeypatch):
    # a non-blocking copy from a temporary pageable CPU tensor can read freed memory on MPS
    risky, to = [], torch.Tensor.to
    def spy(t, *args, **kwargs):
        if kwargs.get("non_blocking") and t.device.type == "cpu" and not t.is_pinned():
            risky.append(t.shape)
        return to(t, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", spy)
    x, y = two_images(5)
    w = torch.tensor([[4, 4, 1]])
    unpaired_model = train_unpaired.UnpairedASGIT(train_unpaired.options(unpaired(objects_set)), torch.device("cpu"))
    supervised_model = train_supervised.SupervisedASGIT(train_supervised.options(supervised(labels_set)),
                                                        torch.device("cpu"))
    for _ in range(2):  # the second visit reads the bank
        unpaired_model.train_step({"A": x, "B": y, "A_id": ["a"], "B_id": ["b"], "A_where": w, "B_where": w})
        supervised_model.train_step({"A": x, "B": y, "id": ["a"], "where": w})
    assert risky == []
    assert asgit.to_device(torch.ones(2), "cpu").device.type == "cpu"


def test_bank_is_small_at_256():
    bank = asgit.AttentionBank(load_size=286, crop_size=256, map_size=(31, 31))
    bank.write(["x"], where(30, 30, 1), torch.rand(1, 1, 31, 31))
    bank.read(["x"], where(0, 0, 0), "cpu")
    assert bank.maps["x"].numel() * 4 < 6000  # bytes: a few KB an image


# ------------------------------------------------------------------------------------------------
# asgit.py: scores (Sec 4.1.3)
# ------------------------------------------------------------------------------------------------

def test_kid_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(6, 4, generator=g).double(), torch.randn(5, 4, generator=g).double() + 0.5
    k = lambda a, b: (a @ b.T / 4 + 1) ** 3
    m = 5  # subsets of the whole of both sets: every subset gives the direct value
    X5 = X[:5]
    direct = ((k(X5, X5).sum() - k(X5, X5).trace()) / (m * (m - 1))
              + (k(Y, Y).sum() - k(Y, Y).trace()) / (m * (m - 1)) - 2 * k(X5, Y).mean()).item()
    mean, std = asgit.kernel_inception_distance(X5, Y, subsets=3, subset_size=5)
    assert math.isclose(mean, direct, rel_tol=1e-9) and std < 1e-12
    # sets smaller than the subset size (1000, the default): subsets of half the smaller set, so the
    # std says how much the score depends on which images were drawn
    mean, std = asgit.kernel_inception_distance(X5, Y, subsets=20)
    assert std > 1e-3 and abs(mean - direct) < 3 * std
    with pytest.raises(ValueError, match="at least 4 samples"):
        asgit.kernel_inception_distance(X[:3], Y[:3])
    same, _ = asgit.kernel_inception_distance(X, X, subsets=10, subset_size=4)
    far, far_std = asgit.kernel_inception_distance(X, X + 3, subsets=10, subset_size=4)
    assert abs(same) < far and far_std > 0


def test_segmentation_scores_on_a_hand_made_example():
    palette = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    truth = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])  # 1 x 2 x 4, classes 0 and 1
    pred = torch.tensor([[[0, 1, 1, 1], [0, 2, 1, 1]]])
    s = asgit.segmentation_scores(pred, truth, 3)
    assert math.isclose(s["pixel_acc"], 6 / 8)
    assert math.isclose(s["class_acc"], (2 / 4 + 4 / 4) / 2)  # class 2 is absent from the truth
    # IoU: class 0: 2 / 4, class 1: 4 / 5, class 2: 0 / 1 (predicted, never true)
    assert math.isclose(s["mean_iou"], (0.5 + 0.8 + 0.0) / 3)
    # nearest palette colour: a slightly-off red is red, dark blue is blue
    img = torch.tensor([[250, 10, 5], [20, 0, 200], [10, 10, 10]], dtype=torch.float32).T.reshape(1, 3, 1, 3)
    assert asgit.nearest_palette_labels(img / 127.5 - 1, palette).tolist() == [[[1, 2, 0]]]


def test_void_pixels_of_the_truth_are_not_scored():
    # Cityscapes-style colour labels: red = class 0, blue = class 1; black (void) and a blended
    # boundary colour match no class exactly and are left out of every score
    palette = [(255, 0, 0), (0, 0, 255)]
    colours = torch.tensor([[255, 0, 0], [255, 0, 0], [0, 0, 0], [128, 0, 128], [0, 0, 255], [0, 0, 255]],
                           dtype=torch.float32).T.reshape(1, 3, 1, 6)
    truth = asgit.exact_palette_labels(colours / 127.5 - 1, palette)
    assert truth.tolist() == [[[0, 0, asgit.IGNORE, asgit.IGNORE, 1, 1]]]
    pred = torch.tensor([[[0, 1, 0, 0, 1, 1]]])  # the two void pixels "wrong" on purpose
    s = asgit.segmentation_scores(pred, truth, 2)
    assert math.isclose(s["pixel_acc"], 3 / 4) and math.isclose(s["class_acc"], (1 / 2 + 2 / 2) / 2)
    assert math.isclose(s["mean_iou"], (1 / 2 + 2 / 3) / 2)  # class 0: 1 / 2, class 1: 2 / 3


def test_truth_distances():
    truth = torch.zeros(1, 3, 2, 2)
    fake = torch.tensor([0.5, 0.0, 0.0, 0.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    source = torch.ones(1, 3, 2, 2)
    mask = torch.tensor([True, False, False, False]).view(1, 1, 2, 2)
    d = asgit.truth_distances(fake, source, truth, mask)
    assert d["l1_truth"] == 0.125 and d["l1_truth_object"] == 0.5 and d["l1_truth_background"] == 0
    assert d["l1_input"] == 1 and d["l1_input_object"] == 1


def test_inception_unavailable_is_a_clear_message(monkeypatch):
    import torchvision.models as tvm

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvm.Inception_V3_Weights.IMAGENET1K_V1, "get_state_dict", no_network, raising=False)
    with pytest.raises(asgit.InceptionUnavailable, match="KID skipped"):
        asgit.inception_model("cpu")


# ------------------------------------------------------------------------------------------------
# asgit.py: training machinery
# ------------------------------------------------------------------------------------------------

def test_linear_decay_schedule_as_in_the_paper():
    opt = asgit.adam([torch.nn.Parameter(torch.zeros(1))], 2e-4)
    assert opt.defaults["betas"] == (0.5, 0.999)
    sched = asgit.linear_decay(opt, epochs=2, epochs_decay=2)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [round(v / 2e-4, 6) for v in lrs] == [1, 1, round(2 / 3, 6), round(1 / 3, 6), 0]


def test_checkpoint_is_atomic_and_mismatch_names_the_option(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    asgit.save_checkpoint({"options": {"ngf": 8, "attention": "pha"}, "w": torch.ones(2)}, path)

    def crash(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        asgit.save_checkpoint({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    state = asgit.load_checkpoint(path, {"ngf": 8, "attention": "pha"}, ["ngf", "attention"])
    assert torch.equal(state["w"], torch.ones(2))  # the earlier checkpoint is intact
    with pytest.raises(asgit.CheckpointMismatch, match="--attention is 'tam'.*--attention 'pha'"):
        asgit.load_checkpoint(path, {"ngf": 8, "attention": "tam"}, ["ngf", "attention"])
    with pytest.raises(asgit.CheckpointMismatch, match="no checkpoint"):
        asgit.load_checkpoint(tmp_path / "none.pt", {}, [])


# ------------------------------------------------------------------------------------------------
# data.py
# ------------------------------------------------------------------------------------------------

# data.py helpers

def noise_image(w, h, seed=0):
    """An RGB image of random pixels: every crop of it is unique."""
    g = torch.Generator().manual_seed(seed)
    px = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    return Image.frombytes("RGB", (w, h), data._u8_bytes(px))


def write_unaligned(root, n_a=3, n_b=2, size=16, phase="train"):
    for dom, n in (("A", n_a), ("B", n_b)):
        (root / f"{phase}{dom}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise_image(size, size, seed=i + (100 if dom == "B" else 0)).save(root / f"{phase}{dom}" / f"{dom}{i}.png")
    return root


def rgb_at(t, y=0, x=0):
    """Pixel of a [-1, 1] tensor as 0..255 ints."""
    return [round(v) for v in ((t[:, y, x] + 1) * 127.5).tolist()]


def tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def no_proxy(monkeypatch):
    """Keep urllib away from any proxy: tests talk to 127.0.0.1 only."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def http_dir(tmp_path, no_proxy):
    """Serve a folder over http://127.0.0.1:PORT in a thread; yields (folder, base url)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------- image reading

def test_messy_images_are_converted(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("L", (5, 4), 77).save(d / "gray.png")
    Image.new("1", (5, 4), 1).save(d / "bits.png")
    rgba = Image.new("RGBA", (5, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # transparent black -> white on composite
    rgba.save(d / "alpha.png")
    Image.new("LA", (5, 4), (10, 255)).save(d / "la.png")
    pal = Image.new("P", (5, 4), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0])
    pal.save(d / "pal.png")
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(d / "cmyk.tif")
    im16 = Image.new("I;16", (5, 4), 0)
    im16.putpixel((0, 0), 65535)
    im16.putpixel((1, 0), 32896)  # 128 * 257
    im16.save(d / "deep.png")
    photo = Image.new("RGB", (8, 4), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    photo.save(d / "rot.jpg", exif=exif.tobytes())
    Image.new("RGB", (5, 4)).save(d / "UPPER.PNG")
    Image.new("RGB", (5, 4)).save(d / "UPPER2.JPG")
    (d / "notes.txt").write_text("not an image")

    names = [p.name for p in data.list_images(d)]
    assert names == sorted(names) and "notes.txt" not in names
    assert {"UPPER.PNG", "UPPER2.JPG", "cmyk.tif", "rot.jpg"} <= set(names) and len(names) == 10
    for p in data.list_images(d):
        assert data.load_rgb(p).mode == "RGB", p
    assert data.load_rgb(d / "gray.png").getpixel((0, 0)) == (77, 77, 77)
    assert data.load_rgb(d / "bits.png").getpixel((0, 0)) == (255, 255, 255)
    assert data.load_rgb(d / "alpha.png").getpixel((0, 0)) == (255, 255, 255)
    assert data.load_rgb(d / "alpha.png").getpixel((1, 0)) == (255, 0, 0)
    assert data.load_rgb(d / "pal.png").getpixel((2, 2)) == (0, 200, 0)
    r, g, b = data.load_rgb(d / "cmyk.tif").getpixel((0, 0))
    assert r > 200 and g < 50 and b < 50
    deep = data.load_rgb(d / "deep.png")
    assert deep.getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped
    assert deep.getpixel((1, 0)) == (128, 128, 128)
    assert deep.getpixel((2, 0)) == (0, 0, 0)
    assert data.load_rgb(d / "rot.jpg").size == (4, 8)  # width and height swapped by EXIF
    assert data.image_size(d / "rot.jpg") == (4, 8)


def test_unreadable_and_truncated_images_are_named_and_skipped(tmp_path):
    root = write_unaligned(tmp_path / "ds", n_a=4, n_b=2, size=16)
    full = (root / "trainA" / "A1.png").read_bytes()
    (root / "trainA" / "A1.png").write_bytes(full[: len(full) // 2])  # header fine, pixels cut off
    (root / "trainA" / "A9.jpg").write_bytes(b"this is not a jpeg at all")
    with pytest.raises(data.UnreadableImage, match="A1.png"):
        data.load_rgb(root / "trainA" / "A1.png")
    assert [p.name for p, _ in data.check_images(root / "trainA")] == ["A1.png", "A9.jpg"]

    with pytest.warns(UserWarning, match="A9.jpg"):  # header unreadable: dropped when listing
        ds = data.UnalignedDataset(root, load_size=16, crop_size=16)
    assert len(ds) == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = [ds[(i, i)]["A_path"] for i in range(len(ds))] + [ds[(1, 5)]["A_path"]]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "A1.png" in messages[0]  # warned once, though visited twice
    assert all(not p.endswith("A1.png") for p in paths)
    assert Path(paths[1]).name == "A2.png"  # the next readable image stands in


# ---------------------------------------------------------------- folder errors

def test_missing_empty_and_small_folders_say_what_to_do(tmp_path):
    with pytest.raises(data.DataError, match="nowhere"):
        data.UnalignedDataset(tmp_path / "nowhere")
    root = tmp_path / "ds"
    (root / "trainA").mkdir(parents=True)
    with pytest.raises(data.DataError, match=r"trainA has no images.*domain A"):
        data.UnalignedDataset(root, load_size=16, crop_size=16)
    noise_image(16, 16).save(root / "trainA" / "a.png")
    with pytest.raises(data.DataError, match=r"trainB is missing"):
        data.UnalignedDataset(root, load_size=16, crop_size=16)
    write_unaligned(root, n_a=1, n_b=1, size=16)
    noise_image(20, 12).save(root / "trainB" / "tiny.png")
    with pytest.raises(data.DataError, match=r"tiny\.png is 20x12.*crop size 16.*--crop-size 12"):
        data.UnalignedDataset(root, load_size=16, crop_size=16)
    data.UnalignedDataset(root, load_size=16, crop_size=16, train=False)  # test resizes: fine
    with pytest.raises(data.DataError, match="--load-size 8.*--crop-size 12"):
        data.UnalignedDataset(root, load_size=8, crop_size=12)
    (root / "val").mkdir()
    Image.new("RGB", (40, 30)).save(root / "val" / "ab.png")  # halves are 20x30
    with pytest.raises(data.DataError, match="ab.png is 20x30 per half"):
        data.AlignedDataset(root, phase="val", load_size=24, crop_size=24)
    with pytest.raises(data.DataError, match="--direction"):
        data.AlignedDataset(root, phase="val", direction="sideways", load_size=16, crop_size=16)


# ---------------------------------------------------------------- transforms and layouts

def test_crop_and_flip_match_the_where_record(tmp_path):
    TF = data._tf()
    root = write_unaligned(tmp_path / "ds", n_a=1, n_b=1, size=20)
    ds = data.UnalignedDataset(root, load_size=24, crop_size=16)
    resized = {}
    for dom in "AB":
        im = data.load_rgb(root / f"train{dom}" / f"{dom}0.png")
        resized[dom] = data.pil_to_tensor(TF.resize(im, [24, 24], interpolation=TF.InterpolationMode.BICUBIC))
    flips = set()
    for seed in range(12):
        item = ds[(0, seed)]
        for dom in "AB":
            top, left, flip = item[f"{dom}_where"].tolist()
            flips.add(flip)
            want = resized[dom][:, top:top + 16, left:left + 16]
            if flip:
                want = want.flip(-1)
            assert item[dom].shape == (3, 16, 16) and item[dom].dtype == torch.float32
            assert torch.equal(item[dom], want)
            assert -1 <= item[dom].min() and item[dom].max() <= 1
    assert flips == {0, 1}
    test_item = data.UnalignedDataset(root, load_size=24, crop_size=16, train=False)[0]
    assert test_item["A"].shape == (3, 16, 16) and test_item["A_where"].tolist() == [0, 0, 0]
    # the paired layout: both halves cut where the record says
    (tmp_path / "paired" / "train").mkdir(parents=True)
    ab = Image.new("RGB", (40, 20))
    ab.paste(noise_image(20, 20, seed=5), (0, 0))
    ab.paste(noise_image(20, 20, seed=6), (20, 0))
    ab.save(tmp_path / "paired" / "train" / "p.png")
    halves = [data.pil_to_tensor(TF.resize(ab.crop(box), [24, 24], interpolation=TF.InterpolationMode.BICUBIC))
              for box in ((0, 0, 20, 20), (20, 0, 40, 20))]
    paired = data.AlignedDataset(tmp_path / "paired", load_size=24, crop_size=16)
    cuts = set()
    for seed in range(12):
        item = paired[(0, seed)]
        top, left, flip = item["where"].tolist()
        cuts.add((top, left, flip))
        for key, half in zip("AB", halves):
            want = half[:, top:top + 16, left:left + 16]
            assert torch.equal(item[key], want.flip(-1) if flip else want)
    assert len(cuts) > 3 and {c[2] for c in cuts} == {0, 1}
    # a half of colour labels is resized with nearest neighbour: every pixel keeps a palette colour
    pair = Image.new("RGB", (40, 20), (255, 0, 0))
    pair.paste(Image.new("RGB", (7, 20), (0, 0, 255)), (5, 0))
    pair.paste(noise_image(20, 20, seed=7), (20, 0))
    pair.save(tmp_path / "paired" / "train" / "p.png")
    for direction, train in (("AtoB", True), ("BtoA", True), ("BtoA", False)):
        item = data.AlignedDataset(tmp_path / "paired", direction=direction, load_size=27, crop_size=13, train=train,
                                   label_half="A")[(0, 3)]
        labels = item["A" if direction == "AtoB" else "B"]
        assert (asgit.exact_palette_labels(labels[None], [(255, 0, 0), (0, 0, 255)]) != asgit.IGNORE).all()


def test_unaligned_items_ids_and_test_pairing(tmp_path):
    root = write_unaligned(tmp_path / "ds", n_a=3, n_b=5, size=16)
    ds = data.UnalignedDataset(root, load_size=16, crop_size=16)
    assert len(ds) == 5
    item = ds[(4, 123)]
    assert item["A_id"] == "trainA/A1.png" and item["A_path"].endswith("A1.png")
    assert item["B_id"].startswith("trainB/B")
    b_ids = {ds[(0, s)]["B_id"] for s in range(40)}
    assert len(b_ids) > 2  # B drawn at random, independently of A
    assert ds[(0, 7)]["B_id"] == ds[(0, 7)]["B_id"]
    write_unaligned(root, n_a=3, n_b=5, size=16, phase="test")
    test = data.UnalignedDataset(root, phase="test", load_size=16, crop_size=16, train=False)
    assert [test[i]["B_id"] for i in range(5)] == [f"testB/B{i}.png" for i in range(5)]


def test_aligned_halves_and_directions(tmp_path):
    root = tmp_path / "paired"
    (root / "train").mkdir(parents=True)
    ab = Image.new("RGB", (32, 16), (255, 0, 0))
    ab.paste(Image.new("RGB", (16, 16), (0, 0, 255)), (16, 0))
    ab.save(root / "train" / "rb.png")
    half = noise_image(16, 16, seed=3)
    twin = Image.new("RGB", (32, 16))
    twin.paste(half, (0, 0))
    twin.paste(half, (16, 0))
    twin.save(root / "train" / "twin.png")

    fwd = data.AlignedDataset(root, direction="AtoB", load_size=20, crop_size=16)
    bwd = data.AlignedDataset(root, direction="BtoA", load_size=20, crop_size=16)
    assert rgb_at(fwd[0]["A"]) == [255, 0, 0] and rgb_at(fwd[0]["B"]) == [0, 0, 255]
    assert rgb_at(bwd[0]["A"]) == [0, 0, 255] and rgb_at(bwd[0]["B"]) == [255, 0, 0]
    assert fwd[0]["id"] == "train/rb.png"
    for seed in range(6):  # identical halves stay identical: both got the same crop and flip
        item = fwd[(1, seed)]
        assert torch.equal(item["A"], item["B"]) and item["where"].shape == (3,)
    (root / "val").mkdir()
    ab.save(root / "val" / "v.png")
    val = data.AlignedDataset(root, phase="val", load_size=16, crop_size=16, train=False)
    assert val[0]["A"].shape == (3, 16, 16) and val[0]["where"].tolist() == [0, 0, 0]


# ---------------------------------------------------------------- sampler

def test_sampler_resumes_and_is_deterministic(tmp_path):
    full = list(data.EpochSampler(10, seed=3, epoch=2))
    assert sorted(i for i, _ in full) == list(range(10))
    assert len({s for _, s in full}) == 10
    for k in (0, 4, 10):
        tail = data.EpochSampler(10, seed=3, epoch=2, start=k)
        assert len(tail) == 10 - k and list(tail) == full[k:]
    assert list(data.EpochSampler(10, seed=3, epoch=2)) == full
    assert list(data.EpochSampler(10, seed=3, epoch=3)) != full
    assert list(data.EpochSampler(10, seed=4, epoch=2)) != full
    with pytest.raises(ValueError):
        data.EpochSampler(10, seed=0, start=11)


def test_dataloader_workers_give_identical_batches(tmp_path):
    root = write_unaligned(tmp_path / "ds", n_a=6, n_b=4, size=12)
    ds = data.UnalignedDataset(root, load_size=12, crop_size=8)

    def batches(workers, start=0):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers,
                                             sampler=data.EpochSampler(len(ds), seed=5, epoch=1, start=start))
        return list(loader)

    one, two = batches(0), batches(2)
    assert len(one) == 3
    for x, y in zip(one, two):
        assert torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"])
        assert torch.equal(x["A_where"], y["A_where"]) and x["A_where"].shape == (2, 3)
        assert x["A_id"] == y["A_id"] and x["B_id"] == y["B_id"]
    resumed = batches(0, start=2)  # resume after the first batch
    assert all(torch.equal(x["A"], y["A"]) for x, y in zip(one[1:], resumed))


# ---------------------------------------------------------------- synthetic sets

def test_synthetic_objects_are_deterministic_with_true_translations(tmp_path):
    kw = dict(size=32, n_train=3, n_test=4)
    a = data.make_synthetic_objects(tmp_path / "a", seed=1, **kw)
    b = data.make_synthetic_objects(tmp_path / "b", seed=1, **kw)
    c = data.make_synthetic_objects(tmp_path / "c", seed=2, **kw)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    assert {p.name for p in a.iterdir()} == {"trainA", "trainB", "testA", "testB", "truth", "mask", "SYNTHETIC.json"}
    assert len(data.list_images(a / "trainB")) == 3 and len(data.list_images(a / "testA")) == 4
    assert (a / "trainA" / "0000.png").read_bytes() != (a / "trainB" / "0000.png").read_bytes()  # unpaired
    stamp = (a / "SYNTHETIC.json").stat().st_mtime_ns
    assert data.make_synthetic_objects(a, seed=1, **kw) == a and (a / "SYNTHETIC.json").stat().st_mtime_ns == stamp
    data.make_synthetic_objects(a, seed=2, **kw)  # other parameters: rebuilt
    assert tree_digest(a) == tree_digest(c)

    for dom in ("testA", "testB"):
        for name in ("0000.png", "0003.png"):
            x = data.pil_to_tensor(data.load_rgb(a / dom / name))
            truth, mask = data.load_truth(a, dom, name)
            assert mask.shape == (1, 32, 32) and mask.dtype == torch.bool and 0.02 < mask.float().mean() < 0.6
            outside, inside = ~mask.expand(3, -1, -1), mask.expand(3, -1, -1)
            assert torch.equal(x[outside], truth[outside])  # background untouched
            assert (x[inside] - truth[inside]).abs().mean() > 0.2  # the object is restyled
    t16, m16 = data.load_truth(a, "testA", "0001.png", 16)
    assert t16.shape == (3, 16, 16) and m16.shape == (1, 16, 16)
    with pytest.raises(data.DataError, match="missing"):
        data.load_truth(a, "testA", "nope.png")


def test_synthetic_labels_photos_follow_the_labels(tmp_path):
    root = data.make_synthetic_labels(tmp_path / "lab", seed=0, size=48, n_train=2, n_test=6)
    assert tree_digest(root) == tree_digest(data.make_synthetic_labels(tmp_path / "lab2", seed=0, size=48, n_train=2, n_test=6))
    colours = torch.tensor([rgb for _, rgb in data.SYNTH_PALETTE], dtype=torch.float32)
    sums, counts = torch.zeros(len(colours), 3), torch.zeros(len(colours))
    for p in data.list_images(root / "test"):
        ab = data.load_rgb(p)
        assert ab.size == (96, 48)
        px = data.pil_to_tensor(ab).add(1).mul(127.5).round()
        label, photo = px[:, :, :48].reshape(3, -1).T, px[:, :, 48:].reshape(3, -1).T / 255
        dist = (label[:, None, :] - colours[None]).abs().sum(-1)
        assert dist.min(1).values.max() == 0  # every label pixel is exactly a palette colour
        cls = dist.argmin(1)
        assert set(cls.tolist()) == set(range(len(colours))), p  # every class in every scene
        sums.index_add_(0, cls, photo)
        counts += torch.bincount(cls, minlength=len(colours))
    means = sums / counts[:, None]
    gaps = torch.cdist(means, means) + torch.eye(len(colours))
    assert gaps.min() > 0.05, means  # each class looks different in the photos
    assert (root / "SYNTHETIC.json").is_file() and len(data.CITYSCAPES_PALETTE) == 19


# ---------------------------------------------------------------- downloads and extraction

def test_download_failure_is_fast_named_and_clean(tmp_path, no_proxy):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    url = f"http://127.0.0.1:{port}/cyclegan/horse2zebra.zip"
    dd = tmp_path / "datasets"
    t0 = time.time()
    with pytest.raises(data.DataError) as e:
        data.download_dataset("horse2zebra", url, dd, timeout=3)
    assert time.time() - t0 < 5
    msg = str(e.value)
    assert "horse2zebra" in msg and url in msg and "trainA/ trainB/ testA/ testB/" in msg and "\n" not in msg
    assert list(dd.iterdir()) == []


def test_download_through_resolve_data_lands_in_place(tmp_path, http_dir, monkeypatch):
    served, base = http_dir
    with zipfile.ZipFile(served / "horse2zebra.zip", "w") as z:
        for folder in ("trainA", "trainB", "testA", "testB"):
            buf = io.BytesIO()
            noise_image(16, 16).save(buf, "PNG")
            z.writestr(f"horse2zebra/{folder}/x.png", buf.getvalue())
    monkeypatch.setattr(data, "CYCLEGAN_URL", base + "/{name}.zip")
    dd = tmp_path / "datasets"
    root = data.resolve_data("horse2zebra", "unaligned", datasets_dir=dd)
    assert root == dd / "horse2zebra" and sorted(p.name for p in dd.iterdir()) == ["horse2zebra"]
    assert len(data.UnalignedDataset(root, load_size=16, crop_size=16)) == 1
    (served / "horse2zebra.zip").unlink()
    assert data.resolve_data("horse2zebra", "unaligned", datasets_dir=dd) == root  # no second download
    with pytest.raises(data.DataError, match="HTTP Error 404"):
        data.download_dataset("other", base + "/other.zip", dd)
    assert sorted(p.name for p in dd.iterdir()) == ["horse2zebra"]


def test_zip_member_escaping_the_target_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok/trainA/a.txt", "fine")
        z.writestr("../evil.txt", "gotcha")
    dest = tmp_path / "out" / "x"
    with pytest.raises(data.DataError, match=r"\.\./evil\.txt"):
        data.safe_extract(archive, dest)
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert list(dest.rglob("*")) == []  # checked before anything is written


@pytest.mark.parametrize("name,link", [("/tmp/abs_evil.txt", None), ("a/../../evil.txt", None), ("link", "../../outside")])
def test_tar_member_escaping_the_target_is_refused(tmp_path, name, link):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        info = tarfile.TarInfo(name)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, link
            t.addfile(info)
        else:
            info.size = 4
            t.addfile(info, io.BytesIO(b"evil"))
    dest = tmp_path / "out" / "x"
    with pytest.raises(data.DataError, match=name.lstrip("/").split("/")[-1]):
        data.safe_extract(archive, dest)
    assert list(dest.rglob("*")) == [] and not (tmp_path / "out" / "evil.txt").exists()


def test_resolve_data_errors_and_folders(tmp_path):
    with pytest.raises(data.DataError, match=r"horse2zebra.*folder path"):
        data.resolve_data("horse3zebra", "unaligned", datasets_dir=tmp_path)
    with pytest.raises(data.DataError, match=r"licence.*python data\.py cityscapes --gtfine"):
        data.resolve_data("cityscapes", "aligned", datasets_dir=tmp_path)
    with pytest.raises(data.DataError, match="train_supervised.py"):
        data.resolve_data("edges2shoes", "unaligned", datasets_dir=tmp_path)
    folder = tmp_path / "mine"
    (folder / "trainA").mkdir(parents=True)
    with pytest.raises(data.DataError, match=r"trainB/, testA/, testB/"):
        data.resolve_data(str(folder), "unaligned")
    (folder / "train").mkdir()
    (folder / "val").mkdir()
    assert data.resolve_data(str(folder), "aligned") == folder and data.aligned_test_phase(folder) == "val"
    syn = data.resolve_data("synthetic", "unaligned", datasets_dir=tmp_path, size=16)
    assert syn == tmp_path / "synthetic_objects" and (syn / "testB").is_dir()


def test_prepare_cityscapes_from_official_zips(tmp_path):
    def png(colour, size=(8, 4)):
        buf = io.BytesIO()
        Image.new("RGB", size, colour).save(buf, "PNG")
        return buf.getvalue()

    gt, left = tmp_path / "gtFine_trainvaltest.zip", tmp_path / "leftImg8bit_trainvaltest.zip"
    frames = [("train", "aachen", "aachen_000000_000019"), ("train", "bochum", "bochum_000000_000313"),
              ("val", "frankfurt", "frankfurt_000000_000294")]
    with zipfile.ZipFile(gt, "w") as zg, zipfile.ZipFile(left, "w") as zl:
        for split, city, key in frames:
            zg.writestr(f"gtFine/{split}/{city}/{key}_gtFine_color.png", png((128, 64, 128, 255)))
            zg.writestr(f"gtFine/{split}/{city}/{key}_gtFine_labelIds.png", png((7, 7, 7)))
            zl.writestr(f"leftImg8bit/{split}/{city}/{key}_leftImg8bit.png", png((90, 100, 110)))
        zl.writestr("leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png", png((1, 2, 3)))
    with pytest.raises(data.DataError, match="--gtfine"):
        data.prepare_cityscapes(left, left, tmp_path / "bad")
    with pytest.warns(UserWarning, match="1 Cityscapes photos"):
        out = data.prepare_cityscapes(gt, left, tmp_path / "cityscapes", size=16)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "train/aachen_000000_000019.png", "train/bochum_000000_000313.png", "val/frankfurt_000000_000294.png"]
    pair = data.load_rgb(out / "train" / "aachen_000000_000019.png")
    assert pair.size == (32, 16) and pair.getpixel((3, 3)) == (90, 100, 110) and pair.getpixel((20, 3)) == (128, 64, 128)
    assert data.resolve_data("cityscapes", "aligned", datasets_dir=tmp_path) == out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------- pictures

def test_heatmap_grid_and_html(tmp_path):
    M = torch.linspace(0, 1, 16).view(1, 4, 4)
    h = data.heatmap(M, 32)
    assert h.shape == (3, 32, 32) and h.min() >= -1 and h.max() <= 1
    assert (h[0] - h[2]).abs().max() > 0.5  # coloured, not grey
    assert h[2, 0, 0] > h[0, 0, 0] and h[0, -1, -1] > h[2, -1, -1]  # low = blue, high = red

    img = torch.rand(3, 32, 32) * 2 - 1
    assert data.tensor_to_pil(img).size == (32, 32)
    data.save_image(img, tmp_path / "one" / "x.png")
    assert Image.open(tmp_path / "one" / "x.png").size == (32, 32)
    path = data.save_grid(tmp_path / "samples" / "step_000010.png",
                          [[img, torch.rand(1, 4, 4), img], [img, img]], ["input", "attention", "translation"],
                          min_tile=0)
    with Image.open(path) as grid:
        assert grid.width == 3 * (32 + 2) + 2 and grid.height > 2 * (32 + 2) + 2
        assert grid.height < 2 * (32 + 2) + 2 + 30  # one line of labels on top
    data.save_grid(tmp_path / "samples" / "step_000200.png", [[img]], ["x"])
    with Image.open(tmp_path / "samples" / "step_000200.png") as big:
        assert big.width == 128 + 4  # small tiles enlarged to min_tile=128
    index = data.write_html(tmp_path, "run <1>").read_text()
    assert "run &lt;1&gt;" in index
    assert index.index("step_000200.png") < index.index("step_000010.png")


def test_import_is_light_and_the_model_module_knows_no_files():
    """`import data` leaves torchvision (and its model zoo) for first use: scripts start fast. asgit.py,
    the paper's module, imports nothing of the project, so it can be read and reused alone."""
    code = ("import sys, data; assert 'torchvision' not in sys.modules; del sys.modules['data']; "
            "import asgit; assert not {'data', 'train_unpaired', 'train_supervised'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(data.__file__).parent)
    imports = [line.strip() for line in Path(asgit.__file__).read_text().splitlines()
               if line.strip().startswith(("import ", "from "))]
    assert not [i for i in imports if i.split()[1].split(".")[0] in {"data", "train_unpaired", "train_supervised"}]


# ------------------------------------------------------------------------------------------------
# train_unpaired.py and train_supervised.py
# ------------------------------------------------------------------------------------------------

TINY = ["--ngf", "4", "--ndf", "4", "--load-size", "36", "--crop-size", "32", "--sample-every", "2",
        "--epochs", "1", "--epochs-decay", "1"]
TINY_UNPAIRED = TINY + ["--n-blocks", "1"]


@pytest.fixture(scope="session")
def objects_set(tmp_path_factory):
    return data.make_synthetic_objects(tmp_path_factory.mktemp("objects"), seed=0, size=32, n_train=4, n_test=3)


@pytest.fixture(scope="session")
def labels_set(tmp_path_factory):
    return data.make_synthetic_labels(tmp_path_factory.mktemp("labels"), seed=0, size=32, n_train=4, n_test=3)


def unpaired(root, *extra):
    return ["--data", str(root)] + TINY_UNPAIRED + list(extra)


def supervised(root, *extra):
    return ["--data", str(root)] + TINY + list(extra)


def load_run(name):
    return torch.load(Path("runs") / name / "checkpoint.pt", weights_only=True)


def straight_and_resumed(main, args, split=5, total=10):
    """Checkpoints of `total` steps straight and of `split` steps then --resume to `total` (same options)."""
    main(args + ["--max-steps", str(total), "--name", "straight"])
    main(args + ["--max-steps", str(split), "--name", "split"])
    main(args + ["--max-steps", str(total), "--name", "split", "--resume"])
    return load_run("straight"), load_run("split")


def assert_same_state(a, b, keys):
    """Every tensor, number and string under keys of two checkpoints is equal."""
    def walk(u, v, where):
        if torch.is_tensor(u):
            assert torch.equal(u, v), f"{where} differs"
        elif isinstance(u, dict):
            assert u.keys() == v.keys(), f"{where} differs"
            for k in u:
                walk(u[k], v[k], f"{where}.{k}")
        elif isinstance(u, (list, tuple)):
            assert len(u) == len(v), f"{where} differs"
            for i, (p, q) in enumerate(zip(u, v)):
                walk(p, q, f"{where}[{i}]")
        else:
            assert u == v, f"{where} differs"
    for key in keys:
        walk(a[key], b[key], key)


@pytest.mark.parametrize("attention,concat", [("none", "rhp"), ("pha", "rhp"), ("pha", "alpha"),
                                              ("tam", "rhp"), ("tam", "alpha")])
def test_unpaired_few_steps_each_attention_and_concat(objects_set, tmp_path, monkeypatch, attention, concat):
    monkeypatch.chdir(tmp_path)
    train_unpaired.main(unpaired(objects_set, "--attention", attention, "--concat", concat, "--max-steps", "3",
                                 "--name", "r"))
    run = Path("runs/r")
    assert json.loads((run / "options.json").read_text())["attention"] == attention
    rows = (run / "losses.csv").read_text().splitlines()
    assert rows[0].split(",") == ["step"] + train_unpaired.UnpairedASGIT.loss_names and len(rows) == 4
    assert "w_range" in rows[0].split(",")
    grids = sorted((run / "samples").glob("*.png"))
    with Image.open(grids[-1]) as grid:  # 32-pixel tiles drawn at 128: 5 columns with the weight and D's map
        assert grid.width == (3 if attention == "none" else 5) * (128 + 2) + 2
    assert (run / "losses.png").exists() and "losses.png" in (run / "index.html").read_text()
    # the test phase: one output per test image each way, and the synthetic scores
    for direction, folder in (("AtoB", "testA"), ("BtoA", "testB")):
        assert len(list((run / "test" / direction).glob("*.png"))) == len(data.list_images(objects_set / folder))
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"AtoB", "BtoA"} and {"l1_truth", "l1_input", "l1_truth_object"} <= set(metrics["AtoB"])
    state = load_run("r")
    assert state["step"] == 3 and (state["bank"] is None) == (attention == "none")


def test_attention_none_builds_no_T_and_feeds_three_channels(objects_set):
    opt = train_unpaired.options(unpaired(objects_set, "--attention", "none", "--concat", "alpha"))
    model = train_unpaired.UnpairedASGIT(opt, torch.device("cpu"))
    assert model.T is None and model.bank is None
    assert model.G.model[1].in_channels == 3 and model.F.model[1].in_channels == 3
    alpha_model = train_unpaired.UnpairedASGIT(train_unpaired.options(unpaired(objects_set, "--concat", "alpha")),
                                               torch.device("cpu"))
    assert alpha_model.G.model[1].in_channels == 4


# ---------------------------------------------------------------- Eq. 1 at run level: both loops, by hand
# Geometry of these tests: 32-pixel crops of a 64-pixel resized image, D's map 3 x 3 (PHA, 4th conv),
# so the bank keeps a 6 x 6 map per image and a crop at pixel p starts at cell round(p * 3 / 32).

def spy_on(monkeypatch, model, names):
    """Record (inputs, output) of every forward of the named networks of model, detached copies."""
    calls = {n: [] for n in names}

    def copy(v):
        if isinstance(v, tuple):
            return tuple(copy(t) for t in v)
        return v.detach().clone() if torch.is_tensor(v) else v

    for n in names:
        def forward(*args, _forward=getattr(model, n).forward, _n=n):
            out = _forward(*args)
            calls[_n].append((copy(args), copy(out)))
            return out
        monkeypatch.setattr(getattr(model, n), "forward", forward)
    return calls


def spy_on_backward(monkeypatch):
    """Record the value of every tensor .backward() is called on: the objective each optimiser follows."""
    totals, backward = [], torch.Tensor.backward
    monkeypatch.setattr(torch.Tensor, "backward",
                        lambda t, *a, **k: totals.append(t.detach().clone()) or backward(t, *a, **k))
    return totals


def two_images(seed, size=32):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, size, size, generator=g) * 2 - 1 for _ in range(2)]


def joined(image, weight, concat):
    """Eq. 4 / Eq. 5 written out, to check what a generator received."""
    return (1 + weight) * image if concat == "rhp" else torch.cat([image, weight], 1)


def weights_given(model, calls, maps, size=32):
    """The weight maps the step must have used for maps (D-sized): T's output, checking that T got
    exactly these maps in one pass, or the upsampled maps themselves with --transfer raw."""
    if model.T is None:
        return [asgit.upsample(m, (size, size)) for m in maps]
    assert len(calls["T"]) == 1
    (T_in, _), T_out = calls["T"][0]
    assert torch.allclose(T_in, torch.cat(maps))
    return list(T_out.split(1))


def close(a, b):
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=1e-6)


@pytest.mark.parametrize("transfer,concat", [("learned", "rhp"), ("raw", "rhp"), ("learned", "alpha")])
def test_unpaired_eq1_each_image_gets_the_map_of_its_own_translation_in_both_directions(objects_set, monkeypatch,
                                                                                        transfer, concat):
    opt = train_unpaired.options(unpaired(objects_set, "--load-size", "64", "--transfer", transfer, "--concat", concat,
                                          "--lambda-cyc", "3", "--lambda-identity", "0.25"))
    model = train_unpaired.UnpairedASGIT(opt, torch.device("cpu"))
    assert model.map_size == (3, 3) and (model.T is None) == (transfer == "raw")
    calls = spy_on(monkeypatch, model, ["G", "F", "D_Y", "D_X"] + (["T"] if model.T else []))
    totals = spy_on_backward(monkeypatch)
    pooled, stand_in = {}, {"Y": torch.full((1, 3, 32, 32), 0.25), "X": torch.full((1, 3, 32, 32), -0.25)}
    for side in "YX":  # D's own step must see what its pool returns, not the fresh fake
        monkeypatch.setattr(getattr(model, f"pool_{side}"), "query",
                            lambda f, s=side: pooled.setdefault(s, []).append(f.detach().clone()) or stand_in[s])
    ones = torch.ones(1, 1, 3, 3)

    def step(where_a, where_b, M_x, M_y, seed):
        for c in (*calls.values(), totals):
            c.clear()
        pooled.clear()
        x, y = two_images(seed)
        loss = model.train_step({"A": x, "B": y, "A_id": ["trainA/a.png"], "B_id": ["trainB/b.png"],
                                 "A_where": torch.tensor([where_a]), "B_where": torch.tensor([where_b])})
        # T runs once on [M_x, M_y, placeholder]: G's map, F's map, and the all-ones map for the passes
        # whose input is a new image (reconstruction, identity)
        w_x, w_y, w_new = weights_given(model, calls, [M_x, M_y, ones])
        fake_y, fake_x = calls["G"][0][1], calls["F"][0][1]
        G_in = [args[0] for args, _ in calls["G"]]
        F_in = [args[0] for args, _ in calls["F"]]
        assert len(G_in) == len(F_in) == 3
        for got, want in zip(G_in, [joined(x, w_x, concat), joined(fake_x, w_new, concat), joined(y, w_new, concat)]):
            assert close(got, want)
        for got, want in zip(F_in, [joined(y, w_y, concat), joined(fake_y, w_new, concat), joined(x, w_new, concat)]):
            assert close(got, want)
        D_Y, D_X = calls["D_Y"], calls["D_X"]
        for D, fake, real, side in ((D_Y, fake_y, y, "Y"), (D_X, fake_x, x, "X")):
            assert len(D) == 3 and all(torch.equal(args[0], want) for (args, _), want in zip(D, [fake, real, stand_in[side]]))
            assert torch.equal(pooled[side][0], fake)
        # every loss term is what its equation says, and reaches the objective with its weight (Eq. 11)
        rec_x, rec_y = calls["F"][1][1], calls["G"][1][1]
        assert close(loss["G"], asgit.gan_loss(D_Y[0][1][0], True)) and close(loss["F"], asgit.gan_loss(D_X[0][1][0], True))
        assert close(loss["cyc_X"], asgit.cycle_loss(x, rec_x)) and close(loss["cyc_Y"], asgit.cycle_loss(y, rec_y))
        assert close(loss["idt"], asgit.identity_loss(y, calls["G"][2][1]) + asgit.identity_loss(x, calls["F"][2][1]))
        assert close(totals[0], loss["G"] + loss["F"] + 3 * (loss["cyc_X"] + loss["cyc_Y"]) + 0.75 * loss["idt"])
        assert close(loss["D_Y"], asgit.discriminator_loss(D_Y[1][1][0], D_Y[2][1][0]))
        assert close(loss["D_X"], asgit.discriminator_loss(D_X[1][1][0], D_X[2][1][0]))
        assert len(totals) == 2 and close(totals[1], loss["D_Y"] + loss["D_X"])
        assert close(loss["w_range"], asgit.weight_range(w_x)) and close(loss["w_range_F"], asgit.weight_range(w_y))
        # the sample grid shows the weight each generator got and the map D gave its translation
        assert torch.equal(model.visuals[1], w_x) and torch.equal(model.visuals[3], D_Y[0][1][1])
        assert torch.equal(model.visuals[6], w_y) and torch.equal(model.visuals[8], D_X[0][1][1])
        return D_Y[0][1][1], D_X[0][1][1], loss  # D's maps of G(x') and F(y')

    # first visit: the placeholder everywhere, so G and F get a flat weight
    M_a, M_b, loss = step((11, 22, 1), (21, 5, 0), ones, ones, seed=1)
    assert loss["w_range"] < 1e-6 and loss["w_range_F"] < 1e-6
    # each map is kept where its crop lay in the whole image (6 x 6 cells), the flip undone
    full_a, full_b = torch.ones(6, 6), torch.ones(6, 6)
    full_a[1:4, 2:5] = M_a[0, 0].flip(-1)
    full_b[2:5, 0:3] = M_b[0, 0]
    maps = model.bank.state_dict()["maps"]
    assert set(maps) == {"trainA/a.png", "trainB/b.png"}
    assert torch.equal(maps["trainA/a.png"], full_a) and torch.equal(maps["trainB/b.png"], full_b)
    # next visit under other crops (b flipped): G gets a's window of a's map, F gets b's of b's map
    M_x, M_y = full_a[0:3, 3:6].reshape(1, 1, 3, 3), full_b[3:6, 0:3].flip(-1).reshape(1, 1, 3, 3)
    assert not torch.equal(M_x, ones) and not torch.equal(M_y, ones) and not torch.equal(M_x, M_y)
    _, _, loss = step((0, 32, 0), (32, 0, 1), M_x, M_y, seed=2)
    assert loss["w_range"] > 0.1 and loss["w_range_F"] > 0.1  # D's map reaches the generators


@pytest.mark.parametrize("transfer", ["learned", "raw"])
def test_supervised_eq1_the_image_gets_the_map_of_its_own_translation(labels_set, monkeypatch, transfer):
    opt = train_supervised.options(supervised(labels_set, "--load-size", "64", "--transfer", transfer,
                                              "--lambda-l1", "7"))
    model = train_supervised.SupervisedASGIT(opt, torch.device("cpu"))
    assert model.map_size == (3, 3) and (model.T is None) == (transfer == "raw")
    calls = spy_on(monkeypatch, model, ["G", "D_Y"] + (["T"] if model.T else []))
    totals = spy_on_backward(monkeypatch)

    def step(where, M, seed):
        for c in (*calls.values(), totals):
            c.clear()
        x, y = two_images(seed)
        loss = model.train_step({"A": x, "B": y, "id": ["train/p.png"], "where": torch.tensor([where])})
        (w,) = weights_given(model, calls, [M])
        assert len(calls["G"]) == 1 and close(calls["G"][0][0][0], (1 + w) * x)
        fake = calls["G"][0][1]
        # conditional D, updated first as in pix2pix: (x, y) and (x, G(x')) in its own step, then the
        # updated D on (x, G(x')) gives G's adversarial loss and the map stored for the next visit
        D = calls["D_Y"]
        assert len(D) == 3 and all(torch.equal(args[0], torch.cat([x, o], 1)) for (args, _), o in zip(D, [y, fake, fake]))
        assert close(loss["D_Y"], asgit.discriminator_loss(D[0][1][0], D[1][1][0])) and close(totals[0], loss["D_Y"])
        assert close(loss["G"], asgit.gan_loss(D[2][1][0], True)) and close(loss["L1"], asgit.l1_loss(fake, y))
        assert len(totals) == 2 and close(totals[1], loss["G"] + 7 * loss["L1"])  # Eq. 9 with lambda = 7
        assert not torch.equal(D[1][1][0], D[2][1][0])  # D moved in between
        assert close(loss["w_range"], asgit.weight_range(w))
        assert torch.equal(model.visuals[1], w) and torch.equal(model.visuals[3], D[2][1][1])
        return D[2][1][1], loss

    ones = torch.ones(1, 1, 3, 3)
    M, loss = step((21, 11, 1), ones, seed=1)
    assert loss["w_range"] < 1e-6
    full = torch.ones(6, 6)
    full[2:5, 1:4] = M[0, 0].flip(-1)
    assert torch.equal(model.bank.state_dict()["maps"]["train/p.png"], full)
    M_next = full[3:6, 0:3].reshape(1, 1, 3, 3)  # crop (32, 0), unflipped
    assert not torch.equal(M_next, ones)
    _, loss = step((32, 0, 0), M_next, seed=2)
    assert loss["w_range"] > 0.1


def test_test_time_passes_get_the_placeholder_and_the_asked_generator(objects_set, labels_set, monkeypatch):
    opt = train_unpaired.options(unpaired(objects_set))
    model = train_unpaired.UnpairedASGIT(opt, torch.device("cpu"))
    calls = spy_on(monkeypatch, model, ["G", "F", "T"])
    images = two_images(3)[0]
    for direction, net in (("AtoB", "G"), ("BtoA", "F")):
        for c in calls.values():
            c.clear()
        out = model.translate(images, direction)
        (T_in, _), w = calls["T"][0]
        assert torch.equal(T_in, torch.ones(1, 1, 3, 3))  # Sec 4: all-ones attention
        assert len(calls[net]) == 1 and close(calls[net][0][0][0], (1 + w) * images)
        assert torch.equal(out, calls[net][0][1]) and not calls["F" if net == "G" else "G"]
    sup = train_supervised.SupervisedASGIT(train_supervised.options(supervised(labels_set)), torch.device("cpu"))
    calls = spy_on(monkeypatch, sup, ["G", "T"])
    sup.translate(images)
    assert torch.equal(calls["T"][0][0][0], torch.ones(1, 1, 3, 3)) and close(calls["G"][0][0][0], (1 + calls["T"][0][1]) * images)


@pytest.mark.parametrize("script,attention,transfer", [("unpaired", "pha", "learned"), ("unpaired", "tam", "raw"),
                                                       ("supervised", "tam", "learned"), ("supervised", "pha", "raw")])
def test_one_step_trains_every_network_each_by_its_own_optimiser(objects_set, labels_set, monkeypatch, script,
                                                                 attention, transfer):
    if script == "unpaired":
        opt = train_unpaired.options(unpaired(objects_set, "--attention", attention, "--transfer", transfer))
        model = train_unpaired.UnpairedASGIT(opt, torch.device("cpu"))
        x, y = two_images(4)
        batch = {"A": x, "B": y, "A_id": ["a"], "B_id": ["b"], "A_where": torch.zeros(1, 3, dtype=torch.long),
                 "B_where": torch.zeros(1, 3, dtype=torch.long)}
        generators, discriminators = ["G", "F"], ["D_Y", "D_X"]
    else:
        opt = train_supervised.options(supervised(labels_set, "--attention", attention, "--transfer", transfer))
        model = train_supervised.SupervisedASGIT(opt, torch.device("cpu"))
        x, y = two_images(4)
        batch = {"A": x, "B": y, "id": ["a"], "where": torch.zeros(1, 3, dtype=torch.long)}
        generators, discriminators = ["G"], ["D_Y"]
    generators += ["T"] if transfer == "learned" else []
    assert (model.T is None) == (transfer != "learned")
    params = lambda names: {f"{n}.{k}": p for n in names for k, p in getattr(model, n).named_parameters()}
    ids = lambda optimiser: {id(p) for g in optimiser.param_groups for p in g["params"]}
    assert ids(model.opt_G) == {id(p) for p in params(generators).values()}  # T learns with G (and F)
    assert ids(model.opt_D) == {id(p) for p in params(discriminators).values()}
    before = {k: p.detach().clone() for k, p in params(generators + discriminators).items()}
    moved = {}  # optimiser -> the parameters its step changed
    for name in ("opt_G", "opt_D"):
        def step(*a, _step=getattr(model, name).step, _name=name, **k):
            ahead = {n: p.detach().clone() for n, p in params(generators + discriminators).items()}
            out = _step(*a, **k)
            moved[_name] = {n for n, p in params(generators + discriminators).items() if not torch.equal(p, ahead[n])}
            return out
        monkeypatch.setattr(getattr(model, name), "step", step)
    model.train_step(batch)
    after = params(generators + discriminators)
    weights = [k for k, p in after.items() if p.dim() > 1]
    assert not [k for k in weights if torch.equal(after[k], before[k])], "some weights did not learn"
    if attention == "tam":
        assert any(".tam.trunk." in k for k in weights) and any(".tam.mask." in k for k in weights)
    # G, F and T move only in the generator step (D frozen), D only in its own step
    assert moved["opt_G"] and all(k.split(".")[0] in generators for k in moved["opt_G"])
    assert moved["opt_D"] and all(k.split(".")[0] in discriminators for k in moved["opt_D"])


def test_unpaired_resume_gives_the_run_of_an_uninterrupted_one(objects_set, tmp_path, monkeypatch):
    # 4 images an epoch, 1 + 2 epochs: the split at step 5 comes after the first learning-rate step
    # and before the second; a pool of 2 is full and swapping by then; the maps of epoch 1 are read
    monkeypatch.chdir(tmp_path)
    a, b = straight_and_resumed(train_unpaired.main, unpaired(objects_set, "--epochs-decay", "2", "--pool-size", "2",
                                                              "--snapshot-every", "1"))
    assert a["step"] == b["step"] == 10 and a["epoch"] == b["epoch"] == 2 and a["position"] == b["position"] == 2
    assert_same_state(a, b, ["G", "F", "D_Y", "D_X", "T", "opt_G", "opt_D", "schedulers", "pool_Y", "pool_X", "bank"])
    assert math.isclose(a["opt_G"]["param_groups"][0]["lr"], 2e-4 / 3)  # epoch 2 of 1 + 2: 1 - 2 / 3
    rows = (Path("runs/split") / "losses.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 11)]
    assert rows == (Path("runs/straight") / "losses.csv").read_text().splitlines()  # same losses too
    assert (Path("runs/split") / "scores.csv").read_text() == (Path("runs/straight") / "scores.csv").read_text()


def test_supervised_resume_gives_the_run_of_an_uninterrupted_one(labels_set, tmp_path, monkeypatch):
    # the ResNet G has dropout, which draws from the global RNG: a resume must continue that stream
    monkeypatch.chdir(tmp_path)
    a, b = straight_and_resumed(train_supervised.main, supervised(labels_set, "--epochs-decay", "2",
                                                                  "--netG", "resnet_6blocks", "--snapshot-every", "1"))
    assert a["step"] == b["step"] == 10
    assert_same_state(a, b, ["G", "D_Y", "T", "opt_G", "opt_D", "schedulers", "bank", "rng"])
    assert (Path("runs/split") / "losses.csv").read_text() == (Path("runs/straight") / "losses.csv").read_text()


def test_checkpoint_mismatch_and_existing_run_messages(objects_set, labels_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_unpaired.main(unpaired(objects_set, "--max-steps", "1", "--name", "r"))
    with pytest.raises(asgit.CheckpointMismatch, match="--ngf is 8 but .* --ngf 4"):
        train_unpaired.main(unpaired(objects_set, "--max-steps", "2", "--name", "r", "--resume", "--ngf", "8"))
    with pytest.raises(asgit.CheckpointMismatch, match="--transfer is 'raw' but .* --transfer learned"):
        train_unpaired.main(unpaired(objects_set, "--max-steps", "2", "--name", "r", "--resume", "--transfer", "raw"))
    # a resumed run keeps its objective; testing and translating do not depend on it
    for flag, value in (("--lambda-cyc", "5"), ("--lambda-identity", "0.1"), ("--gan-mode", "vanilla"),
                        ("--pool-size", "3")):
        with pytest.raises(asgit.CheckpointMismatch, match=f"{flag} is .* but .* made with {flag} "):
            train_unpaired.main(unpaired(objects_set, "--max-steps", "2", "--name", "r", "--resume", flag, value))
    train_unpaired.main(unpaired(objects_set, "--name", "r", "--test-only", "--lambda-cyc", "5"))
    train_supervised.main(supervised(labels_set, "--max-steps", "1", "--name", "s"))
    with pytest.raises(asgit.CheckpointMismatch, match="--lambda-l1 is 1.0 but .* made with --lambda-l1 100.0"):
        train_supervised.main(supervised(labels_set, "--max-steps", "2", "--name", "s", "--resume", "--lambda-l1", "1"))
    with pytest.raises(asgit.CheckpointMismatch, match="already holds a run"):
        train_unpaired.main(unpaired(objects_set, "--max-steps", "2", "--name", "r"))


def pngs(folder):
    """{file name: its pixels as an int tensor} of a folder of PNGs."""
    out = {}
    for p in sorted(Path(folder).iterdir()):
        with Image.open(p) as im:
            out[p.name] = torch.tensor(list(im.convert("RGB").tobytes()), dtype=torch.int16)
    return out


def test_test_only_and_translate_reproduce_the_trained_networks_in_the_asked_direction(objects_set, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_unpaired.main(unpaired(objects_set, "--max-steps", "4", "--lr", "0.01", "--name", "r"))
    train_unpaired.main(unpaired(objects_set, "--max-steps", "1", "--lr", "0", "--name", "untrained"))
    run = Path("runs/r")
    trained = {d: pngs(run / "test" / d) for d in ("AtoB", "BtoA")}
    untrained = pngs("runs/untrained/test/AtoB")
    assert all((trained["AtoB"][k] - untrained[k]).abs().max() > 8 for k in untrained)  # training shows
    (run / "metrics.json").unlink()
    for d in ("AtoB", "BtoA"):
        for p in (run / "test" / d).iterdir():
            p.unlink()
    train_unpaired.main(unpaired(objects_set, "--name", "r", "--test-only"))
    assert {d: pngs(run / "test" / d) for d in ("AtoB", "BtoA")}.keys() == trained.keys()
    for d in ("AtoB", "BtoA"):
        again = pngs(run / "test" / d)
        assert again.keys() == trained[d].keys() and all(torch.equal(again[k], trained[d][k]) for k in again)
    assert json.loads((run / "metrics.json").read_text()).keys() == {"AtoB", "BtoA"}
    # --translate: the test images of B through F (BtoA) are the test phase's BtoA outputs; AtoB is G's
    translated = {}
    for d in ("BtoA", "AtoB"):
        train_unpaired.main(unpaired(objects_set, "--name", "r", "--translate", str(objects_set / "testB"),
                                     "--direction", d))
        translated[d] = pngs(run / "translated")
    assert translated["BtoA"].keys() == trained["BtoA"].keys()
    for k, img in translated["BtoA"].items():
        assert (img - trained["BtoA"][k]).abs().max() <= 1  # one grey level: batch of 1 against 8
        assert (translated["AtoB"][k] - img).abs().max() > 8


def test_supervised_test_only_reproduces_the_trained_network(labels_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_supervised.main(supervised(labels_set, "--max-steps", "4", "--lr", "0.01", "--name", "s"))
    train_supervised.main(supervised(labels_set, "--max-steps", "1", "--lr", "0", "--name", "untrained"))
    out = Path("runs/s/test/AtoB")
    trained, untrained = pngs(out), pngs("runs/untrained/test/AtoB")
    assert all((trained[k] - untrained[k]).abs().max() > 8 for k in trained)
    for p in out.iterdir():
        p.unlink()
    train_supervised.main(supervised(labels_set, "--name", "s", "--test-only"))
    again = pngs(out)
    assert again.keys() == trained.keys() and all(torch.equal(again[k], trained[k]) for k in again)


def test_scores_are_wired_to_the_truth(objects_set, labels_set, tmp_path, monkeypatch):
    """A translation equal to the truth scores 0 (L1) or perfect (PSNR, segmentation): the scores
    compare the output with the truth, not with the input or another image."""
    cpu = torch.device("cpu")
    opt = train_unpaired.options(unpaired(objects_set, "--workers", "0"))
    model = train_unpaired.UnpairedASGIT(opt, cpu)
    truths = {d: [data.load_truths(objects_set, src, b["name"], 32)[0]
                  for b in data.make_test_loader(objects_set / src, 32, 0, cpu)]
              for d, src in (("AtoB", "testA"), ("BtoA", "testB"))}
    monkeypatch.setattr(model, "translate", lambda images, direction: truths[direction].pop(0))
    metrics = train_unpaired.test_phase(model, opt, objects_set, tmp_path / "u")
    for d in ("AtoB", "BtoA"):
        m = metrics[d]
        assert m["l1_truth"] == m["l1_truth_object"] == m["l1_truth_background"] == 0
        assert m["l1_input"] > 0.05 and m["l1_input_object"] > m["l1_input_background"]
    for direction in ("AtoB", "BtoA"):
        opt = train_supervised.options(supervised(labels_set, "--direction", direction, "--workers", "0"))
        model = train_supervised.SupervisedASGIT(opt, cpu)
        test = data.AlignedDataset(labels_set, data.aligned_test_phase(labels_set), direction, 32, 32, train=False)
        targets = [test[i]["B"][None] for i in range(len(test))]
        monkeypatch.setattr(model, "translate", lambda images: targets.pop(0))
        m = train_supervised.test_phase(model, opt, labels_set, tmp_path / direction)[direction]
        assert m["l1"] == 0 and m["psnr"] == 100
        if direction == "BtoA":  # photo -> label
            assert m["pixel_acc"] == m["class_acc"] == m["mean_iou"] == 1


README_DEFAULTS = {  # option -> (paper setting, synthetic preset), as the README's option table states them
    "attention": ("pha", "pha"), "pha_layer": (4, 4), "concat": ("rhp", "rhp"), "transfer": ("learned", "learned"),
    "gan_mode": ("lsgan", "lsgan"), "batch_size": (1, 1), "lr": (2e-4, 2e-4), "seed": (0, 0), "device": ("auto", "auto"),
    "amp": (False, False), "save_every": (1000, 1000), "load_size": (286, 72), "crop_size": (256, 64),
    "snapshot_every": (10, 2),
}
README_DEFAULTS_UNPAIRED = {"ngf": (64, 32), "ndf": (64, 16), "n_blocks": (9, 3), "epochs": (100, 6),
                            "epochs_decay": (100, 6), "lambda_cyc": (10, 10), "lambda_identity": (0, 0.5),
                            "pool_size": (50, 50), "sample_every": (1000, 300)}
README_DEFAULTS_SUPERVISED = {"ngf": (64, 16), "ndf": (64, 16), "netG": ("unet", "unet"), "epochs": (100, 4),
                              "epochs_decay": (100, 4), "lambda_l1": (100, 100), "sample_every": (1000, 200)}


def test_defaults_are_the_papers_and_the_readmes():
    for script, real, own in ((train_unpaired, "horse2zebra", README_DEFAULTS_UNPAIRED),
                              (train_supervised, "facades", README_DEFAULTS_SUPERVISED)):
        for column, data_name in enumerate((real, "synthetic")):
            opt = vars(script.options(["--data", data_name]))
            for key, values in {**README_DEFAULTS, **own}.items():
                assert opt[key] == values[column], f"{script.__name__} --{key} with --data {data_name}"
    rows = {}
    for line in (Path(__file__).parent / "README.md").read_text().splitlines():
        if line.startswith("| `--"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # \| is a pipe in a cell
            rows[cells[0]] = cells[1:3]
    assert rows["`--lambda-cyc` (unpaired)"] == ["10", "10"]
    assert rows["`--lambda-identity` (unpaired)"] == ["0 (paper)", "0.5"]
    assert rows["`--lambda-l1` (supervised)"] == ["100", "100"]
    assert rows["`--pool-size` (unpaired)"] == ["50", "50"]
    assert rows["`--pha-layer N`"][0] == "4" and rows["`--attention pha\\|tam\\|none`"][0] == "`pha`"
    assert rows["`--concat rhp\\|alpha`"][0] == "`rhp`" and rows["`--gan-mode lsgan\\|vanilla`"][0] == "`lsgan`"
    assert rows["`--transfer learned\\|raw\\|flat`"][0] == "`learned`"
    assert rows["`--ngf`, `--ndf`"][0] == "64, 64" and rows["`--n-blocks` (unpaired)"] == ["9", "3"]
    assert rows["`--epochs`, `--epochs-decay`"][0] == "100, 100" and rows["`--lr`"] == ["2e-4", "2e-4"]
    assert rows["`--snapshot-every N`"] == ["10", "2"]


def test_benchmark_prints_step_ms_and_writes_nothing(objects_set, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train_unpaired.main(unpaired(objects_set, "--benchmark", "2"))
    train_supervised.main(supervised(objects_set, "--benchmark", "2"))
    out = capsys.readouterr().out.split()
    assert len([w for w in out if w.startswith("step_ms=") and float(w[8:]) > 0]) == 2
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_saves_a_loadable_checkpoint(objects_set, tmp_path):
    cmd = [sys.executable, str(Path(__file__).parent / "train_unpaired.py")] + unpaired(
        objects_set, "--name", "c", "--epochs", "1000", "--sample-every", "1000")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    csv_file = tmp_path / "runs" / "c" / "losses.csv"
    deadline = time.time() + 60
    while time.time() < deadline and not (csv_file.exists() and len(csv_file.read_text().splitlines()) > 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "--resume" in out
    state = torch.load(tmp_path / "runs" / "c" / "checkpoint.pt", weights_only=True)
    assert state["step"] >= 4  # the CSV got rows at the first epoch end (4 images)


@pytest.mark.parametrize("attention,concat,direction", [("none", "rhp", "AtoB"), ("pha", "rhp", "BtoA"),
                                                        ("pha", "alpha", "AtoB"), ("tam", "rhp", "AtoB"),
                                                        ("tam", "alpha", "BtoA")])
def test_supervised_few_steps_each_attention_concat_and_direction(labels_set, tmp_path, monkeypatch, attention,
                                                                   concat, direction):
    monkeypatch.chdir(tmp_path)
    train_supervised.main(supervised(labels_set, "--attention", attention, "--concat", concat,
                                     "--direction", direction, "--max-steps", "3", "--name", "s"))
    run = Path("runs/s")
    assert len(list((run / "test" / direction).glob("*.png"))) == len(data.list_images(labels_set / "test"))
    metrics = json.loads((run / "metrics.json").read_text())[direction]
    assert {"l1", "psnr"} <= set(metrics)
    if direction == "BtoA":  # photo -> label: the FCN-score definitions
        assert {"pixel_acc", "class_acc", "mean_iou"} <= set(metrics)


def test_cityscapes_photo_to_label_scores_ignore_void_end_to_end(tmp_path, monkeypatch):
    """A tiny folder in pix2pix's Cityscapes layout (A = photo, B = colour labels with void): the scores in
    metrics.json are those recomputed from the saved outputs against the exact-colour truth, void left out."""
    palette = [rgb for _, rgb in data.CITYSCAPES_PALETTE]
    root = tmp_path / "cityscapes"
    for split, n in (("train", 2), ("val", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            label = Image.new("RGB", (40, 40), palette[0])  # road
            label.paste(Image.new("RGB", (40, 14), palette[10]), (0, 0))  # sky
            label.paste(Image.new("RGB", (12, 12), palette[13]), (6 + 9 * i, 20))  # a car
            label.paste(Image.new("RGB", (40, 6), (0, 0, 0)), (0, 34))  # ego vehicle: void
            pair = Image.new("RGB", (80, 40))
            pair.paste(noise_image(40, 40, seed=10 + i), (0, 0))
            pair.paste(label, (40, 0))
            pair.save(root / split / f"c{i}.png")
    monkeypatch.chdir(tmp_path)
    train_supervised.main(supervised(root, "--direction", "AtoB", "--max-steps", "2", "--name", "city"))
    metrics = json.loads(Path("runs/city/metrics.json").read_text())["AtoB"]
    outputs = pngs("runs/city/test/AtoB")
    preds, truths = [], []
    for i in range(2):
        with Image.open(root / "val" / f"c{i}.png") as pair:
            label = pair.crop((40, 0, 80, 40)).resize((32, 32), Image.NEAREST)
        truths.append(asgit.exact_palette_labels(data.pil_to_tensor(label)[None], palette))
        saved = outputs[f"c{i}.png"].view(32, 32, 3).permute(2, 0, 1).float() / 127.5 - 1
        preds.append(asgit.nearest_palette_labels(saved[None], palette))
    truth = torch.cat(truths)
    assert (truth == asgit.IGNORE).float().mean() > 0.1 and (truth != asgit.IGNORE).all(-1).any()
    expected = asgit.segmentation_scores(torch.cat(preds), truth, len(palette))
    for k, v in expected.items():
        assert math.isclose(metrics[k], v, rel_tol=1e-12), k


def test_supervised_conditional_D_sees_the_input(labels_set, monkeypatch):
    opt = train_supervised.options(supervised(labels_set, "--load-size", "32"))
    model = train_supervised.SupervisedASGIT(opt, torch.device("cpu"))
    seen = []
    forward = model.D_Y.forward
    monkeypatch.setattr(model.D_Y, "forward", lambda x: seen.append(x.detach().clone()) or forward(x))
    batch = {"A": torch.rand(1, 3, 32, 32), "B": torch.rand(1, 3, 32, 32), "id": ["a"],
             "where": torch.zeros(1, 3, dtype=torch.long)}
    model.train_step(batch)
    assert len(seen) == 3 and all(s.shape[1] == 6 and torch.equal(s[:, :3], batch["A"]) for s in seen)
    assert torch.equal(seen[0][:, 3:], batch["B"])  # the real pair (x, y), in D's step, which comes first


def test_bad_options_say_what_to_do(labels_set, objects_set, capsys):
    with pytest.raises(SystemExit):
        train_supervised.options(supervised(labels_set, "--crop-size", "48", "--load-size", "48"))
    assert "--crop-size 48" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_unpaired.options(unpaired(objects_set, "--load-size", "16"))
    assert "--load-size (16) must be at least --crop-size (32)" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA is not available"):
            asgit.pick_device("cuda")


def test_command_line_errors_are_one_line_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "train_unpaired.py"), "--data", "nosuchset"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: --data 'nosuchset' is neither a folder nor a known dataset")


def test_resnet_G_for_supervised(labels_set):
    opt = train_supervised.options(supervised(labels_set, "--netG", "resnet_6blocks", "--crop-size", "48",
                                              "--load-size", "48"))
    model = train_supervised.SupervisedASGIT(opt, torch.device("cpu"))
    assert isinstance(model.G, asgit.ResnetGenerator) and model.D_Y.convs[0][0].in_channels == 6


def test_psnr_by_hand():
    a, b = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.2)  # [0, 1] difference 0.1: MSE 0.01 -> 20 dB
    assert math.isclose(asgit.psnr(a, b), 20.0, rel_tol=1e-5)


def test_loss_log_batches_rows_and_a_resume_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "losses.csv"
    log = asgit.LossLog(path, ["G", "D"], every=2)
    for step in range(1, 6):
        log.add(step, {"G": torch.tensor(step * 1.0), "D": torch.tensor(0.5)})
    assert len(path.read_text().splitlines()) == 5  # step 5 waits for the next fetch
    log.flush()
    assert path.read_text().splitlines()[5] == "5,5,0.5" and log.last == {"G": 5.0, "D": 0.5}
    asgit.LossLog(path, ["G", "D"], resume_step=3)  # the checkpoint was at step 3
    assert [r.split(",")[0] for r in path.read_text().splitlines()] == ["step", "1", "2", "3"]


def test_gpu_check_runs_its_quick_version_on_the_cpu(tmp_path, monkeypatch, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parent / "labs" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.chdir(tmp_path)
    rows = gpu_check.main(["--device", "cpu", "--quick", "--timed-steps", "1", "--train-steps", "3"])
    out = capsys.readouterr().out
    assert "| check | configuration | result | notes |" in out and out.count("\n| step, ") == 6
    assert [r[2] for r in rows if r[0].startswith("train")] == ["losses finite"] * 2
    assert [r[3] for r in rows if r[0].startswith("bank")] == ["ok"] * 2
    assert list(tmp_path.iterdir()) == []  # nothing left behind


# ---------------------------------------------------------------- a trained run as a tool

def test_a_run_is_used_without_repeating_its_flags(objects_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trained = ["--data", str(objects_set), "--ngf", "8", "--ndf", "4", "--n-blocks", "2", "--load-size", "36",
               "--crop-size", "32", "--epochs", "1", "--epochs-decay", "1", "--max-steps", "2", "--name", "r"]
    train_unpaired.main(trained)
    src = data.list_images(objects_set / "testA")[0]
    train_unpaired.main(["--name", "r", "--translate", str(src)])  # the run's --data, --ngf, --n-blocks ...
    assert [p.name for p in Path("runs/r/translated").iterdir()] == [src.stem + ".png"]
    (Path("runs/r") / "metrics.json").unlink()
    train_unpaired.main(["--name", "r", "--test-only"])
    assert Path("runs/r/metrics.json").exists()
    with pytest.raises(asgit.CheckpointMismatch, match="--ngf is 16 but the run runs/r was made with --ngf 8"):
        train_unpaired.main(["--name", "r", "--test-only", "--ngf", "16"])
    with pytest.raises(asgit.CheckpointMismatch, match="no checkpoint at runs/nothing"):
        train_unpaired.main(["--name", "nothing", "--translate", str(src)])


def test_translate_any_size_and_aspect_at_the_input_size(objects_set, labels_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_unpaired.main(unpaired(objects_set, "--max-steps", "2", "--lr", "0.01", "--name", "r"))
    mine = tmp_path / "mine"
    mine.mkdir()
    noise_image(37, 23, seed=1).save(mine / "wide.png")  # odd sizes: padded to 40 x 24, cropped back
    noise_image(6, 50, seed=2).convert("L").save(mine / "thin.jpg")  # grayscale, too thin to mirror
    Image.new("RGBA", (16, 16), (0, 255, 0, 128)).save(mine / "alpha.png")
    (mine / "broken.png").write_bytes(b"not a picture")
    with pytest.warns(UserWarning, match="broken.png"):
        train_unpaired.main(unpaired(objects_set, "--name", "r", "--translate", str(mine), "--direction", "BtoA"))
    out = Path("runs/r/translated")
    assert {p.name: Image.open(p).size for p in out.iterdir()} == {"wide.png": (37, 23), "thin.png": (6, 50),
                                                                   "alpha.png": (16, 16)}
    # the output is the generator's on the reflection-padded image, cropped back
    model = train_unpaired.UnpairedASGIT(train_unpaired.options(unpaired(objects_set)), torch.device("cpu"))
    model.load_state_dict(load_run("r"))
    x = data.pil_to_tensor(data.load_rgb(mine / "wide.png"))[None]
    want = model.translate(torch.nn.functional.pad(x, (0, 3, 0, 1), mode="reflect"), "BtoA")[0, :, :23, :37]
    got = data.pil_to_tensor(Image.open(out / "wide.png").convert("RGB"))
    assert (got - want).abs().max() <= 1.01 / 127.5
    train_unpaired.main(unpaired(objects_set, "--name", "r", "--translate", str(mine / "wide.png"),
                                 "--translate-size", "16"))
    assert Image.open(out / "wide.png").size == (26, 16)  # shorter side 16, aspect kept
    # the supervised U-Net (32-pixel crops: 5 levels) takes multiples of 32
    train_supervised.main(supervised(labels_set, "--max-steps", "1", "--name", "s"))
    train_supervised.main(supervised(labels_set, "--name", "s", "--translate", str(mine / "wide.png")))
    assert Image.open("runs/s/translated/wide.png").size == (37, 23)
    (mine / "empty").mkdir()
    with pytest.raises(data.DataError, match="empty has no images"):
        train_unpaired.main(unpaired(objects_set, "--name", "r", "--translate", str(mine / "empty")))
    with pytest.raises(data.DataError, match="no such file or folder"):
        train_unpaired.main(unpaired(objects_set, "--name", "r", "--translate", str(mine / "none.png")))


def test_snapshots_keep_the_generators_and_score_each_one(objects_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_unpaired.main(unpaired(objects_set, "--snapshot-every", "1", "--name", "r"))  # 2 epochs of 4 images
    run = Path("runs/r")
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    snap = torch.load(run / "snapshots" / "epoch_001.pt", weights_only=True)
    assert {"G", "F", "T"} <= set(snap) and not {"D_Y", "D_X", "opt_G", "opt_D", "bank"} & set(snap)
    with open(run / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "4"), ("2", "8")]
    # the score of a snapshot is the test phase of that snapshot; --epoch picks it
    train_unpaired.main(unpaired(objects_set, "--name", "r", "--test-only", "--epoch", "1"))
    metrics = json.loads((run / "metrics_epoch_001.json").read_text())
    for d in ("AtoB", "BtoA"):
        for k, v in metrics[d].items():
            assert math.isclose(float(rows[0][f"{d}_{k}"]), v, rel_tol=1e-6), (d, k)
    assert len(list((run / "test_epoch_001" / "AtoB").iterdir())) == 3
    assert json.loads((run / "metrics.json").read_text()) != metrics  # the last state differs from epoch 1
    train_unpaired.main(unpaired(objects_set, "--name", "r", "--translate", str(objects_set / "testB"), "--epoch", "2"))
    assert len(list((run / "translated_epoch_002").iterdir())) == 3
    with pytest.raises(asgit.CheckpointMismatch, match="no snapshot of --epoch 3 .* there are epochs 1, 2"):
        train_unpaired.main(unpaired(objects_set, "--name", "r", "--test-only", "--epoch", "3"))
    train_unpaired.main(unpaired(objects_set, "--snapshot-every", "0", "--max-steps", "4", "--name", "none"))
    assert not Path("runs/none/snapshots").exists() and not Path("runs/none/scores.csv").exists()
    with pytest.raises(SystemExit):
        train_unpaired.options(unpaired(objects_set, "--epoch", "1"))  # only with --test-only / --translate


def test_snapshots_and_their_scores_leave_training_as_it_was(labels_set, tmp_path, monkeypatch):
    # the supervised test phase reseeds dropout; scoring a snapshot mid-run must not change what follows
    monkeypatch.chdir(tmp_path)
    for every in ("1", "0"):
        train_supervised.main(supervised(labels_set, "--netG", "resnet_6blocks", "--max-steps", "7",
                                         "--snapshot-every", every, "--name", f"every{every}"))
    a, b = load_run("every1"), load_run("every0")
    assert Path("runs/every1/scores.csv").exists()
    assert_same_state(a, b, ["G", "D_Y", "T", "opt_G", "opt_D", "rng"])
