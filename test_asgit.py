"""Fast offline tests. Each names the equation or the promise it pins. Run: python -m pytest -q"""

import math

import pytest
import torch

import asgit

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


def test_guided_input_none_is_plain_input_and_channels():
    x = torch.randn(1, 3, 8, 8)
    assert asgit.guided_input(x, None, None, "rhp") is x
    T = asgit.AttentionTransfer()
    M = torch.rand(1, 1, 3, 3)
    assert asgit.guided_input(x, M, T, "rhp").shape == (1, 3, 8, 8)
    assert asgit.guided_input(x, M, T, "alpha").shape == (1, 4, 8, 8)
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
