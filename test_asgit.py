"""Fast offline tests. Each names the equation or the behaviour it pins. Run: python -m pytest -q test_asgit.py

Sections: asgit.py (networks, T and concatenations, losses, bank, scores, machinery), data.py
(reading, transforms, datasets, synthetic sets, downloads, pictures), then the two training scripts.
Everything runs on tiny images in tmp_path; the only network use is an http.server on 127.0.0.1.
"""

import functools
import hashlib
import http.server
import io
import json
import math
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
    a = torch.tensor([[[[1.0, -3.0], [2.0, 0.0]], [[3.0, 1.0], [-4.0, 2.0]]]])  # 1 x 2 x 2 x 2
    # channel mean of |a|: [[2, 2], [3, 1]] -> min-max: [[0.5, 0.5], [1, 0]]
    assert torch.allclose(asgit.post_hoc_attention(a), torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]]))
    flat = asgit.post_hoc_attention(torch.full((1, 3, 4, 4), 2.0))
    assert torch.equal(flat, torch.ones(1, 1, 4, 4))  # a flat map: no division by zero


def test_eq3_tam_formula():
    tam = asgit.TrainableAttention(2, asgit.norm_layer("none"))
    x = torch.randn(1, 2, 5, 5)
    E, M = tam(x)
    A, trunk = tam.mask(x), tam.trunk(x)
    assert torch.allclose(E, (A + 1) * trunk)
    assert torch.allclose(M, A.mean(1, keepdim=True)) and 0 <= M.min() and M.max() <= 1


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
    m = 5  # fewer samples than subset_size: each subset is m of each set
    X5 = X[:5]
    direct = ((k(X5, X5).sum() - k(X5, X5).trace()) / (m * (m - 1))
              + (k(Y, Y).sum() - k(Y, Y).trace()) / (m * (m - 1)) - 2 * k(X5, Y).mean()).item()
    mean, std = asgit.kernel_inception_distance(X5, Y, subsets=3, subset_size=1000)
    assert math.isclose(mean, direct, rel_tol=1e-9) and std < 1e-12
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


def test_import_is_light():
    """`import data` leaves torchvision (and its model zoo) for first use: scripts start fast."""
    import subprocess
    code = "import sys, data; assert 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(data.__file__).parent)


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


def straight_and_resumed(main, args):
    """Checkpoints of 6 steps straight and of 3 steps then --resume to 6 (same options)."""
    main(args + ["--max-steps", "6", "--name", "straight"])
    main(args + ["--max-steps", "3", "--name", "split"])
    main(args + ["--max-steps", "6", "--name", "split", "--resume"])
    return load_run("straight"), load_run("split")


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
    assert list((run / "samples").glob("*.png")) and (run / "index.html").exists()
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


def tiny_batch(ids_a, ids_b, n=1, size=32):
    g = torch.Generator().manual_seed(1)
    w = torch.zeros(n, 3, dtype=torch.long)
    return {"A": torch.rand(n, 3, size, size, generator=g) * 2 - 1, "B": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "A_id": ids_a, "B_id": ids_b, "A_where": w, "B_where": w}


def test_bank_is_written_from_the_D_forward_on_the_translation_and_read_next_visit(objects_set, monkeypatch):
    opt = train_unpaired.options(unpaired(objects_set, "--load-size", "32"))
    model = train_unpaired.UnpairedASGIT(opt, torch.device("cpu"))
    seen = []  # (input, M) of every D_Y forward
    forward = model.D_Y.forward
    monkeypatch.setattr(model.D_Y, "forward", lambda x: seen.append((x, forward(x)[1])) or forward(x))
    t_inputs = []
    t_forward = model.T.forward
    monkeypatch.setattr(model.T, "forward", lambda M, size: t_inputs.append(M.clone()) or t_forward(M, size))
    batch = tiny_batch(["a"], ["b"])
    model.train_step(batch)
    # T runs once a step on [M_x, M_y, placeholder]: the first row is the map that guides G(x)
    assert len(t_inputs) == 1 and torch.equal(t_inputs[0], torch.ones_like(t_inputs[0]))  # first visit: ones
    d_on_fake = [M for x, M in seen if x.data_ptr() == model.visuals[2].data_ptr()]
    assert len(d_on_fake) == 1  # D_Y looked at G(x') once in the generator step: no extra pass
    stored = model.bank.read(["a"], batch["A_where"], "cpu")
    assert torch.allclose(stored, d_on_fake[0]) and not torch.equal(stored, torch.ones_like(stored))
    t_inputs.clear()
    model.train_step(batch)
    assert torch.allclose(t_inputs[0][:1], stored)  # next visit: G is guided by the stored map


def test_unpaired_resume_gives_the_weights_of_an_uninterrupted_run(objects_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = straight_and_resumed(train_unpaired.main, unpaired(objects_set))
    assert a["step"] == b["step"] == 6 and a["epoch"] == b["epoch"]
    for key in ("G", "F", "D_Y", "D_X", "T"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert a["bank"]["maps"].keys() == b["bank"]["maps"].keys()
    rows = (Path("runs/split") / "losses.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert rows[1:] == (Path("runs/straight") / "losses.csv").read_text().splitlines()[1:]  # same losses too


def test_checkpoint_mismatch_and_existing_run_messages(objects_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_unpaired.main(unpaired(objects_set, "--max-steps", "1", "--name", "r"))
    with pytest.raises(asgit.CheckpointMismatch, match="--ngf is 8 but .* --ngf 4"):
        train_unpaired.main(unpaired(objects_set, "--max-steps", "2", "--name", "r", "--resume", "--ngf", "8"))
    with pytest.raises(asgit.CheckpointMismatch, match="already holds a run"):
        train_unpaired.main(unpaired(objects_set, "--max-steps", "2", "--name", "r"))


def test_test_only_and_translate_a_folder(objects_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_unpaired.main(unpaired(objects_set, "--max-steps", "2", "--name", "r"))
    (Path("runs/r") / "metrics.json").unlink()
    train_unpaired.main(unpaired(objects_set, "--name", "r", "--test-only"))
    assert Path("runs/r/metrics.json").exists()
    src = data.list_images(objects_set / "testB")
    train_unpaired.main(unpaired(objects_set, "--name", "r", "--translate", str(objects_set / "testB"),
                                 "--direction", "BtoA"))
    assert sorted(p.name for p in Path("runs/r/translated").iterdir()) == sorted(p.stem + ".png" for p in src)


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
    assert torch.equal(seen[1][:, 3:], batch["B"])  # the real pair (x, y)


def test_supervised_resume_gives_the_weights_of_an_uninterrupted_run(labels_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = straight_and_resumed(train_supervised.main, supervised(labels_set))
    for key in ("G", "D_Y", "T"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"


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


def test_identity_loss_when_asked_and_resnet_G_for_supervised(objects_set, labels_set):
    opt = train_unpaired.options(unpaired(objects_set, "--load-size", "32", "--lambda-identity", "0.5"))
    loss = train_unpaired.UnpairedASGIT(opt, torch.device("cpu")).train_step(tiny_batch(["a"], ["b"]))
    assert loss["idt"].item() > 0
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
