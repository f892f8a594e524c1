"""How images get in and out of ASGIT: datasets, transforms, synthetic sets, downloads, pictures.

Sections, in order:
  1. errors and image reading   (every messy file becomes an RGB PIL image, or a named error)
  2. transforms                 (CycleGAN's resize_and_crop, paper Sec 4.1.4, with a `where` record)
  3. datasets + sampler         (unaligned A/B folders, aligned A|B images, seeded resumable order)
  4. synthetic datasets         (made from a seed, with the true translation known)
  5. download / extract         (named CycleGAN and pix2pix sets, safe extraction, Cityscapes prep)
  6. folder checks              (resolve_data: --data SPEC -> a validated folder)
  7. pictures                   (tensor <-> PIL, attention heat maps, sample grids, loss curves, index.html)
  8. loaders                    (training batches in resumable order, test folders, --translate)

Image tensors are float32, 3 x H x W, in [-1, 1] (mean 0.5, std 0.5 normalisation).
User-facing problems raise DataError with a one-line message that says what to do.
Run `python data.py cityscapes --help` to build the Cityscapes folders from the official zips.
"""

import colorsys
import csv
import hashlib
import html
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import torch
import torch.nn.functional as nnf
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler


# ------------------------------------------------------------------------------------------------
# 1. Errors and image reading
# ------------------------------------------------------------------------------------------------

class DataError(Exception):
    """A problem with the user's data or options; the message is one line that says what to do."""


class UnreadableImage(DataError):
    """An image file that cannot be decoded (corrupt, truncated, not an image)."""

    def __init__(self, path, reason):
        self.path, self.reason = Path(path), str(reason)
        super().__init__(f"cannot read image {path}: {reason}")


IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def is_image_file(path):
    """True for a visible file name with an image extension (any case)."""
    p = Path(path)
    # Dot files are skipped: macOS "._x.jpg" forks carry an image extension but no image.
    return p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


def list_images(folder):
    """Image files directly inside folder, sorted by name (not recursive)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))


def _high_bit_depth_to_l(im):
    """16-bit or 32-bit grey (I;16*, I, F) -> 8-bit L by scaling the range, not by clipping."""
    if im.mode.startswith("I;16"):
        im = im.convert("I")
    lo, hi = im.getextrema()
    if im.mode == "F":
        # Float images are usually in [0, 1]; anything else is stretched to its own range.
        lo, hi = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)
        scale = 255.0 / max(hi - lo, 1e-12)
        return im.point(lambda v: v * scale - lo * scale).convert("L")
    if lo >= 0 and hi <= 65535:
        # Treat mode I as 16-bit data: 65535 -> 255 (dividing by 257 maps 0xFFFF to 0xFF exactly).
        return im.point(lambda v: v / 257.0).convert("L")
    scale = 255.0 / max(hi - lo, 1)
    return im.point(lambda v: v * scale - lo * scale).convert("L")


def to_rgb(im):
    """Any PIL mode -> RGB. Transparent pixels are composited on white, as an image viewer shows them
    (dropping alpha would expose whatever colour happens to be stored under transparent pixels)."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode.startswith("I") or im.mode == "F":
        im = _high_bit_depth_to_l(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(path):
    """Decode an image file fully (so truncation shows here) -> RGB PIL image, EXIF orientation applied."""
    try:
        with Image.open(path) as im:
            im.load()  # lazy open only reads the header: force the full decode now
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # a broken file can raise almost anything from inside a codec
        raise UnreadableImage(path, f"{type(e).__name__}: {e}") from None


def image_size(path):
    """(width, height) from the header only, after EXIF rotation; cheap (no pixel decode)."""
    with Image.open(path) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_images(folder):
    """Decode every image in folder; returns [(path, reason)] for the ones that fail (slow: full decode)."""
    bad = []
    for p in list_images(folder):
        try:
            load_rgb(p)
        except UnreadableImage as e:
            bad.append((p, e.reason))
    return bad


def pil_to_tensor(im):
    """RGB PIL image -> float32 3 x H x W in [-1, 1]."""
    w, h = im.size
    raw = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return raw.view(h, w, 3).permute(2, 0, 1).float().div(127.5).sub(1.0)


# ------------------------------------------------------------------------------------------------
# 2. Transforms (paper Sec 4.1.4: resize to load_size, random crop crop_size, random flip)
# ------------------------------------------------------------------------------------------------

def _tf():
    # Imported on first use: torchvision pulls in its model zoo, which would make `import data` slow.
    import torchvision.transforms.functional as TF
    return TF


def draw_cut(rng, load_size, crop_size):
    """(top, left, flip) of a random crop of a load_size square, drawn from rng (random.Random)."""
    top = rng.randint(0, load_size - crop_size)
    left = rng.randint(0, load_size - crop_size)
    flip = int(rng.random() < 0.5)
    return top, left, flip


def apply_cut(im, cut, load_size, crop_size, train=True, labels=False):
    """Train: resize to load_size, crop at cut, flip if asked. Test: resize to crop_size. Bicubic, or
    nearest for colour label maps (labels=True), whose pixels must keep exact palette colours.

    Returns (3 x crop x crop tensor in [-1, 1], where = LongTensor [top, left, flip]); the attention
    bank uses `where` to keep its maps in the coordinates of the whole resized image."""
    TF = _tf()
    mode = TF.InterpolationMode.NEAREST if labels else TF.InterpolationMode.BICUBIC
    if not train:
        im = TF.resize(im, [crop_size, crop_size], interpolation=mode)
        return pil_to_tensor(im), torch.zeros(3, dtype=torch.long)
    top, left, flip = cut
    im = TF.resize(im, [load_size, load_size], interpolation=mode)
    im = TF.crop(im, top, left, crop_size, crop_size)
    if flip:
        im = TF.hflip(im)
    return pil_to_tensor(im), torch.tensor([top, left, flip], dtype=torch.long)


# ------------------------------------------------------------------------------------------------
# 3. Datasets + sampler
# ------------------------------------------------------------------------------------------------

def derive_seed(*parts):
    """A deterministic 63-bit int from ints/strings (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(Sampler):
    """Yields (index, item_seed) for positions start..n-1 of epoch's permutation of range(n).

    The permutation comes from a torch.Generator seeded from (seed, epoch) and item_seed from
    (seed, epoch, position), so every sample (which image, which crop, which flip) is fixed by
    (seed, epoch, position) alone: identical for any number of DataLoader workers, and a run
    resumes mid-epoch with EpochSampler(n, seed, epoch, start=position)."""

    def __init__(self, n, seed, epoch=0, start=0):
        if not 0 <= start <= n:
            raise ValueError(f"start={start} must be in [0, {n}]")
        self.n, self.seed, self.epoch, self.start = int(n), int(seed), int(epoch), int(start)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(derive_seed("order", self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        for pos in range(self.start, self.n):
            yield order[pos], derive_seed("item", self.seed, self.epoch, pos)

    def __len__(self):
        return self.n - self.start


def _split_key(key):
    """(index, item_seed) from a sampler tuple, or from a plain int (then item_seed = index)."""
    if isinstance(key, (tuple, list)):
        index, item_seed = key
        return int(index), int(item_seed)
    return int(key), int(key)


def _rel_id(path, root):
    """Stable image id: the file name relative to the dataset root, e.g. 'trainA/x.jpg'."""
    return PurePosixPath(Path(path).relative_to(root)).as_posix()


class _FolderDataset(Dataset):
    """Shared checks and loading for the two layouts."""

    def __init__(self, root, load_size, crop_size, train):
        self.root = Path(root)
        self.load_size, self.crop_size, self.train = int(load_size), int(crop_size), bool(train)
        if not self.root.is_dir():
            raise DataError(f"dataset folder {self.root} does not exist: check --data or create it")
        if self.train and self.load_size < self.crop_size:
            raise DataError(f"--load-size {self.load_size} is smaller than --crop-size {self.crop_size}: "
                            f"images are resized to the load size before the crop, so use a load size >= crop size")
        self._bad = set()  # files that failed to decode in this process (warned once each)

    def _scan(self, folder, what, halves=False):
        """Images of folder with readable headers, checked against the crop size (train only)."""
        if not folder.is_dir():
            raise DataError(f"dataset folder {folder} is missing: {what}")
        paths = list_images(folder)
        if not paths:
            raise DataError(f"{folder} has no images ({'/'.join(IMG_EXTENSIONS)}): {what}")
        good = []
        for p in paths:
            try:
                w, h = image_size(p)
            except Exception as e:
                warnings.warn(f"skipping unreadable image {p}: {type(e).__name__}: {e}")
                continue
            if halves:
                w //= 2  # each half of an A|B image is one image
            if self.train and min(w, h) < self.crop_size:
                raise DataError(f"image {p} is {w}x{h}{' per half' if halves else ''}, smaller than the crop "
                                f"size {self.crop_size}: use --crop-size {min(w, h)} (and a matching "
                                f"--load-size) or remove/upscale the image")
            good.append(p)
        if not good:
            raise DataError(f"{folder} has no readable images: {what}")
        return good

    def _load(self, paths, index):
        """(PIL image, path) of paths[index], or of the next readable one: training goes on past bad files."""
        n = len(paths)
        for step in range(n):
            p = paths[(index + step) % n]
            if p in self._bad:
                continue
            try:
                return load_rgb(p), p
            except UnreadableImage as e:
                self._bad.add(p)
                warnings.warn(f"skipping unreadable image {p}: {e.reason}")
        raise DataError(f"no readable image left in {paths[0].parent}: replace the broken files")

    def _cut(self, rng):
        return draw_cut(rng, self.load_size, self.crop_size) if self.train else (0, 0, 0)


class UnalignedDataset(_FolderDataset):
    """Unpaired images: ROOT/{phase}A and ROOT/{phase}B (CycleGAN layout).

    Train: A = image index % nA, B = a random image of domain B drawn from the item's own rng
    (CycleGAN with serial_batches off); each gets its own crop and flip. Test (train=False): B =
    image index % nB, both resized to crop_size, where = 0. len = max(nA, nB)."""

    def __init__(self, root, phase="train", load_size=286, crop_size=256, train=True):
        super().__init__(root, load_size, crop_size, train)
        self.phase = phase
        layout = "an unpaired dataset needs trainA/ trainB/ testA/ testB/ folders of images"
        self.A_paths = self._scan(self.root / f"{phase}A", f"put the {phase} images of domain A there ({layout})")
        self.B_paths = self._scan(self.root / f"{phase}B", f"put the {phase} images of domain B there ({layout})")

    def __len__(self):
        return max(len(self.A_paths), len(self.B_paths))

    def __getitem__(self, key):
        index, item_seed = _split_key(key)
        rng = random.Random(item_seed)
        b_index = rng.randrange(len(self.B_paths)) if self.train else index
        A, A_path = self._load(self.A_paths, index % len(self.A_paths))
        B, B_path = self._load(self.B_paths, b_index % len(self.B_paths))
        A, A_where = apply_cut(A, self._cut(rng), self.load_size, self.crop_size, self.train)
        B, B_where = apply_cut(B, self._cut(rng), self.load_size, self.crop_size, self.train)
        return {"A": A, "B": B, "A_id": _rel_id(A_path, self.root), "B_id": _rel_id(B_path, self.root),
                "A_where": A_where, "B_where": B_where, "A_path": str(A_path), "B_path": str(B_path)}


class AlignedDataset(_FolderDataset):
    """Paired images: ROOT/{phase}/*.png of side-by-side A|B (pix2pix layout), split down the middle.

    direction 'BtoA' swaps the halves, so A is always the input and B the target. Both halves get
    the same crop and flip. phase may be train, val or test. label_half ('A' or 'B', the half of the
    file) names a half of colour label maps, resized with nearest neighbour."""

    def __init__(self, root, phase="train", direction="AtoB", load_size=286, crop_size=256, train=True,
                 label_half=None):
        super().__init__(root, load_size, crop_size, train)
        if direction not in ("AtoB", "BtoA"):
            raise DataError(f"--direction {direction!r} is not valid: use AtoB or BtoA")
        self.phase, self.direction, self.label_half = phase, direction, label_half
        what = f"put the {phase} images there: a paired dataset has train/ and test/ (or val/) of side-by-side A|B images"
        self.paths = self._scan(self.root / phase, what, halves=True)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        index, item_seed = _split_key(key)
        rng = random.Random(item_seed)
        AB, path = self._load(self.paths, index % len(self.paths))
        w, h = AB.size
        half = w // 2
        A, B = AB.crop((0, 0, half, h)), AB.crop((half, 0, w, h))
        A_labels, B_labels = self.label_half == "A", self.label_half == "B"
        if self.direction == "BtoA":
            (A, A_labels), (B, B_labels) = (B, B_labels), (A, A_labels)
        cut = self._cut(rng)
        A, where = apply_cut(A, cut, self.load_size, self.crop_size, self.train, A_labels)
        B, _ = apply_cut(B, cut, self.load_size, self.crop_size, self.train, B_labels)
        return {"A": A, "B": B, "id": _rel_id(path, self.root), "where": where, "path": str(path)}


# ------------------------------------------------------------------------------------------------
# 4. Synthetic datasets (the built-in defaults: made in seconds, true translation known)
# ------------------------------------------------------------------------------------------------
#
# Every scene is rendered from a torch.Generator seeded by (seed, folder, index), so a set is the
# same bytes on every machine, and changing the counts does not change the other scenes.

SYNTH_PALETTE = [  # Cityscapes colours for the classes the synthetic street scenes use
    ("sky", (70, 130, 180)),
    ("building", (70, 70, 70)),
    ("road", (128, 64, 128)),
    ("vegetation", (107, 142, 35)),
    ("car", (0, 0, 142)),
    ("person", (220, 20, 60)),
]
SKY, BUILDING, ROAD, VEGETATION, CAR, PERSON = range(len(SYNTH_PALETTE))

CITYSCAPES_PALETTE = [  # the 19 train-id classes of Cityscapes with their official colours
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)), ("fence", (190, 153, 153)), ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)), ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)), ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)), ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
]

_SYNTH_VERSION = 3  # bump when the renderers change, so old folders are rebuilt


def _gen(seed, *key):
    g = torch.Generator()
    g.manual_seed(derive_seed("synthetic", seed, *key))
    return g


def _uni(g, lo, hi):
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g, lo, hi):
    """Uniform int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g).item())


def _hsv(h, s, v):
    return torch.tensor(colorsys.hsv_to_rgb(h % 1.0, s, v)).view(3, 1, 1)


def _grid(size):
    """Pixel-centre coordinates (y, x), each size x size, in pixels."""
    r = torch.arange(size, dtype=torch.float32) + 0.5
    return r.view(-1, 1).expand(size, size), r.view(1, -1).expand(size, size)


def _smooth_noise(g, size, cells):
    """1 x size x size value noise: random values on a cells x cells grid, bilinearly upsampled."""
    coarse = torch.rand(1, 1, cells, cells, generator=g)
    return nnf.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]


def _u8_bytes(t):
    """The bytes of a uint8 tensor in row-major order (copied through a bytearray: no numpy needed)."""
    buf = bytearray(t.numel())
    torch.frombuffer(buf, dtype=torch.uint8).copy_(t.reshape(-1))
    return bytes(buf)


def _to_pil(img01):
    """3 x H x W in [0, 1] -> RGB PIL (rounded, not truncated)."""
    u8 = (img01.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    return Image.frombytes("RGB", (u8.shape[1], u8.shape[0]), _u8_bytes(u8))


def _save_png(im, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "PNG")  # no metadata, fixed compression: same pixels -> same bytes


def _background_colour(g):
    """A clutter colour whose hue keeps clear of the object's: orange (A) and navy/cyan (B).
    The object stays findable by colour, and a global hue shift would ruin the background."""
    t = _uni(g, 0.0, 0.34 + 0.30)
    hue = 0.16 + t if t < 0.34 else 0.72 + (t - 0.34)
    return _hsv(hue, _uni(g, 0.25, 0.8), _uni(g, 0.3, 0.9))


def _object_scene(seed, split, index, size):
    """Everything about one object scene that both domains share: clutter, shape, pose, shading."""
    g = _gen(seed, "objects", split, index)
    S = size
    yy, xx = _grid(S)
    # Clutter: a tilted two-colour gradient, rectangles, soft blobs, then pixel noise.
    a = _uni(g, 0, 2 * math.pi)
    t = ((xx * math.cos(a) + yy * math.sin(a)) / S * 0.7 + 0.5).clamp(0, 1)
    bg = _background_colour(g) * (1 - t) + _background_colour(g) * t
    for _ in range(_randint(g, 2, 4)):
        x0, y0 = _randint(g, -S // 4, S - 4), _randint(g, -S // 4, S - 4)
        x1, y1 = x0 + _randint(g, S // 8, S // 2), y0 + _randint(g, S // 8, S // 2)
        x0, y0 = max(x0, 0), max(y0, 0)
        alpha = _uni(g, 0.5, 1.0)
        bg[:, y0:y1, x0:x1] = bg[:, y0:y1, x0:x1] * (1 - alpha) + _background_colour(g) * alpha
    for _ in range(_randint(g, 2, 4)):
        cx, cy, r = _uni(g, 0, S), _uni(g, 0, S), _uni(g, 0.05, 0.2) * S
        w = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * _uni(g, 0.5, 0.9)
        bg = bg * (1 - w) + _background_colour(g) * w
    bg = bg * (0.85 + 0.3 * _smooth_noise(g, S, 6))
    # The object: a (possibly lobed) ellipse with a random size, position and pose.
    R = _uni(g, 0.22, 0.32) * S
    cx, cy = _uni(g, R, S - R), _uni(g, R, S - R)
    pose = _uni(g, 0, math.pi)
    elong = _uni(g, 1.0, 1.8)
    lobes = [0, 3, 4, 5][_randint(g, 0, 3)]
    amp = _uni(g, 0.08, 0.2) if lobes else 0.0
    phase = _uni(g, 0, 2 * math.pi)
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(pose) + dy * math.sin(pose)  # along the major axis
    v = -dx * math.sin(pose) + dy * math.cos(pose)
    ua, vb = u / (R * math.sqrt(elong)), v / (R / math.sqrt(elong))
    rn = torch.sqrt(ua ** 2 + vb ** 2)
    q = rn / (1 + amp * torch.cos(lobes * torch.atan2(vb, ua) + phase))  # < 1 inside the shape
    mask = q < 1
    # Dome shading lit from the top left, and a specular highlight: shared by both styles.
    shade = 0.45 + 0.55 * torch.sqrt((1 - q.clamp(max=1) ** 2).clamp(min=0)) - 0.15 * (dx + dy) / (2 * R)
    hl = torch.exp(-((dx + 0.35 * R) ** 2 + (dy + 0.35 * R) ** 2) / (2 * (0.22 * R) ** 2)) * 0.45
    return {
        "bg": bg, "mask": mask, "shade": shade.clamp(0.2, 1.2), "hl": hl, "R": R,
        # colour and stripe period are fixed by the shape, so each image has exactly one true translation
        "orange": _hsv(0.075, 0.9, 0.95), "period": 0.5 * R, "x": xx - cx,
        "noise": torch.randn(3, S, S, generator=g) * 0.01,
    }


def _render_object(scene, style):
    """Domain A: a smooth shaded orange object. Domain B: the same object restyled with navy and
    pale-cyan vertical stripes centred on it (like horse -> zebra). The background is untouched."""
    if style == "A":
        body = scene["orange"] * scene["shade"]
    else:
        stripes = torch.sigmoid(5 * torch.cos(2 * math.pi * scene["x"] / scene["period"]))
        dark, light = torch.tensor([0.08, 0.12, 0.32]).view(3, 1, 1), torch.tensor([0.80, 0.93, 1.0]).view(3, 1, 1)
        body = (dark * (1 - stripes) + light * stripes) * scene["shade"]
    body = body + scene["hl"]
    m = scene["mask"].float()
    return _to_pil(scene["bg"] * (1 - m) + body * m + scene["noise"])


def _synthetic_folder(root, params, build):
    """Build a synthetic set into a temporary folder and move it into place; skip when root already
    holds the same parameters. Refuses to overwrite a folder that is not a synthetic set."""
    root = Path(root)
    stamp = root / "SYNTHETIC.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == params:
                return root
        except ValueError:
            pass
    elif root.exists() and any(root.iterdir()):
        raise DataError(f"{root} exists and is not a synthetic dataset: move it away or choose another --datasets-dir")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        build(tmp)
        (tmp / "SYNTHETIC.json").write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
        if root.exists():
            shutil.rmtree(root)  # an older synthetic set with other parameters
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def make_synthetic_objects(root, seed=0, size=64, n_train=200, n_test=50):
    """Unpaired object set (like apple2orange / horse2zebra) with the true translation of every test image.

    Writes trainA/ trainB/ (different scenes: unpaired), testA/ testB/, truth/testA/NAME (testA/NAME in
    domain B), truth/testB/NAME (testB/NAME in domain A), mask/testX/NAME (L, 255 = object) and
    SYNTHETIC.json. Returns root."""
    params = {"kind": "objects", "seed": seed, "size": size, "n_train": n_train, "n_test": n_test,
              "version": _SYNTH_VERSION}

    def build(out):
        for split, n in (("trainA", n_train), ("trainB", n_train), ("testA", n_test), ("testB", n_test)):
            style, other = split[-1], "B" if split[-1] == "A" else "A"
            for i in range(n):
                name = f"{i:04d}.png"
                scene = _object_scene(seed, split, i, size)
                _save_png(_render_object(scene, style), out / split / name)
                if split.startswith("test"):
                    _save_png(_render_object(scene, other), out / "truth" / split / name)
                    mask = scene["mask"].to(torch.uint8).mul(255)
                    _save_png(Image.frombytes("L", (size, size), _u8_bytes(mask)),
                              out / "mask" / split / name)

    return _synthetic_folder(root, params, build)


def _street_scene(seed, split, index, size):
    """(class-index map H x W, photo 3 x H x W in [0, 1]) of one street scene."""
    g = _gen(seed, "labels", split, index)
    S = size
    yy, xx = _grid(S)
    lab = torch.full((S, S), SKY, dtype=torch.long)
    photo = torch.zeros(3, S, S)

    def paint(region, cls, texture):
        lab[region] = cls
        photo[:, region] = texture.expand(3, S, S)[:, region]

    light = _uni(g, 0.85, 1.1)  # per-image exposure, so colours are not a fixed lookup
    hz = int(_uni(g, 0.38, 0.55) * S)  # horizon row
    sky_t = (yy / max(hz, 1)).clamp(0, 1)
    paint(lab == SKY, SKY, torch.tensor([0.35, 0.55, 0.88]).view(3, 1, 1) * (1 - sky_t)
          + torch.tensor([0.78, 0.86, 0.95]).view(3, 1, 1) * sky_t)
    # Buildings along the skyline, each with its own wall colour and a grid of windows.
    x, first = 0, True
    cell = max(3, S // 14)
    windows = ((xx % cell) < cell / 2) & ((yy % cell) < cell / 2)
    while x < S:
        w = _randint(g, max(4, S // 10), max(5, S // 3))
        top = int(hz - _uni(g, 0.1, 0.35) * S)
        if first or _uni(g, 0, 1) > 0.25:
            wall = _hsv(_uni(g, 0.0, 0.15), _uni(g, 0.05, 0.35), _uni(g, 0.35, 0.75))
            tex = wall * torch.where(windows, 0.55, 1.0) * (1 - 0.2 * (xx - x) / w)
            paint((xx >= x) & (xx < x + w) & (yy >= top) & (yy < hz + 1), BUILDING, tex)
        x, first = x + w, False
    # Ground: grass verge, then the road as a trapezoid running to a vanishing point on the horizon.
    grass = torch.tensor([0.25, 0.45, 0.12]).view(3, 1, 1) * (0.7 + 0.6 * _smooth_noise(g, S, S // 3))
    paint(yy >= hz, VEGETATION, grass)
    vx, wb = _uni(g, 0.35, 0.65) * S, _uni(g, 0.3, 0.6) * S
    depth = ((yy - hz) / (S - hz)).clamp(min=0)
    road = (yy >= hz) & ((xx - vx).abs() < 1 + wb * depth)
    asphalt = (0.3 + 0.1 * torch.rand(1, S, S, generator=g)) * (1 - 0.25 * depth)
    paint(road, ROAD, asphalt * torch.tensor([1.0, 1.0, 1.05]).view(3, 1, 1))
    # Trees: dark blotchy canopies standing on the horizon.
    leaves = torch.tensor([0.15, 0.35, 0.1]).view(3, 1, 1) * (0.6 + 0.8 * _smooth_noise(g, S, S // 4))
    for _ in range(_randint(g, 1, 3)):
        r = _uni(g, 0.05, 0.12) * S
        cx, cy = _uni(g, 0, S), hz - 0.5 * r
        paint((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, VEGETATION, leaves)
    # Cars on the road and people on the verge, scaled by their distance to the horizon.
    for _ in range(_randint(g, 1, 3)):
        yb = _uni(g, hz + 0.25 * (S - hz), S)
        d = (yb - hz) / (S - hz)
        cw = max(3.0, d * _uni(g, 0.25, 0.4) * S)
        ch = max(2.0, cw * _uni(g, 0.45, 0.6))
        cx = vx + (_uni(g, 0, 1) - 0.5) * wb * d * 1.2
        body = torch.tensor([[0.75, 0.1, 0.1], [0.1, 0.2, 0.7], [0.9, 0.9, 0.9], [0.12, 0.12, 0.12],
                             [0.6, 0.62, 0.65]])[_randint(g, 0, 4)].view(3, 1, 1)
        glass = (yy < yb - 0.6 * ch)
        tex = torch.where(glass, torch.tensor([0.25, 0.3, 0.38]).view(3, 1, 1), body * (1.1 - 0.4 * (yy - yb + ch) / ch))
        paint(((xx - cx).abs() < cw / 2) & (yy >= yb - ch) & (yy < yb), CAR, tex)
    for _ in range(_randint(g, 1, 2)):
        yb = _uni(g, hz + 0.15 * (S - hz), S)
        d = (yb - hz) / (S - hz)
        ph = max(5.0, d * 0.4 * S)
        pw = max(2.0, ph * 0.3)
        side = 1 if _uni(g, 0, 1) < 0.5 else -1
        px = vx + side * (1 + wb * d + _uni(g, 1, 0.15 * S + 1))
        px = min(max(px, pw / 2), S - pw / 2)
        clothes = _hsv(_uni(g, 0.55, 1.0), _uni(g, 0.5, 0.9), _uni(g, 0.3, 0.7))  # blue..red, not brown
        tex = torch.where(yy < yb - 0.8 * ph, torch.tensor([0.85, 0.65, 0.5]).view(3, 1, 1), clothes)
        paint(((xx - px).abs() < pw / 2) & (yy >= yb - ph) & (yy < yb), PERSON, tex)
    photo = (photo * light + torch.randn(3, S, S, generator=g) * 0.015).clamp(0, 1)
    return lab, photo


def labels_to_rgb(lab, palette=SYNTH_PALETTE):
    """H x W class indices -> 3 x H x W palette colours in [0, 1]."""
    colours = torch.tensor([rgb for _, rgb in palette], dtype=torch.float32) / 255
    return colours[lab].permute(2, 0, 1)


def make_synthetic_labels(root, seed=0, size=64, n_train=200, n_test=50):
    """Paired label-map | photo set (Cityscapes-like street scenes, SYNTH_PALETTE colours).

    Writes train/NAME.png and test/NAME.png of side-by-side A|B = label | photo (width 2*size), and
    SYNTHETIC.json. Photos are rendered from the labels with per-class textures, shading and noise."""
    params = {"kind": "labels", "seed": seed, "size": size, "n_train": n_train, "n_test": n_test,
              "version": _SYNTH_VERSION}

    def build(out):
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                lab, photo = _street_scene(seed, split, i, size)
                _save_png(_to_pil(torch.cat([labels_to_rgb(lab), photo], dim=2)), out / split / f"{i:04d}.png")

    return _synthetic_folder(root, params, build)


def load_truth(root, phase_dir, file_name, size=None):
    """(true counterpart 3 x H x W in [-1, 1], object mask bool 1 x H x W) of a synthetic test image,
    resized to size x size (bicubic for the image, nearest for the mask) when size is given."""
    truth_path = Path(root) / "truth" / phase_dir / file_name
    mask_path = Path(root) / "mask" / phase_dir / file_name
    for p in (truth_path, mask_path):
        if not p.is_file():
            raise DataError(f"{p} is missing: ground truth exists only for synthetic sets made by make_synthetic_objects")
    truth = load_rgb(truth_path)
    with Image.open(mask_path) as m:
        mask = m.convert("L")
    if size is not None:
        truth = truth.resize((size, size), Image.BICUBIC)
        mask = mask.resize((size, size), Image.NEAREST)
    w, h = mask.size
    mask_t = torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8).view(1, h, w) > 127
    return pil_to_tensor(truth), mask_t


# ------------------------------------------------------------------------------------------------
# 5. Download / extract (named datasets) and Cityscapes preparation
# ------------------------------------------------------------------------------------------------

CYCLEGAN_DATASETS = ("apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo", "cezanne2photo",
                     "ukiyoe2photo", "vangogh2photo", "maps", "facades", "iphone2dslr_flower", "ae_photos")
PIX2PIX_DATASETS = ("facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day")
# Module-level so tests (or a mirror) can point them elsewhere; {name} is the dataset name.
CYCLEGAN_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"
PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"

LAYOUT_HELP = ("trainA/ trainB/ testA/ testB/ of images (unpaired), or train/ test/ of side-by-side "
               "A|B images (paired)")
CITYSCAPES_HELP = ("Cityscapes cannot be downloaded automatically (its licence needs a registered account): "
                   "register at https://www.cityscapes-dataset.com, download gtFine_trainvaltest.zip and "
                   "leftImg8bit_trainvaltest.zip, then run: python data.py cityscapes --gtfine "
                   "gtFine_trainvaltest.zip --leftimg leftImg8bit_trainvaltest.zip --out {out}")


def _inside(base, target):
    """True when target (already resolved) is base or below it."""
    return target == base or base in target.parents


def _check_member_name(name, dest):
    """Refuse absolute names and names that resolve outside dest; returns the resolved target."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", name) or not _inside(dest, (dest / pure).resolve()):
        raise DataError(f"archive member {name!r} would be written outside {dest}: refusing to extract this archive")
    return (dest / pure).resolve()


def safe_extract(archive, dest):
    """Extract a .zip or .tar(.gz) into dest, refusing (DataError naming the member) absolute paths,
    members that escape dest, and links pointing outside it; nothing is extracted if one is bad."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
            for info in infos:
                _check_member_name(info.filename, dest)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DataError(f"archive member {info.filename!r} is a symbolic link: refusing to extract this archive")
            z.extractall(dest)
        return
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as e:
        raise DataError(f"{archive} is neither a zip nor a tar archive ({e}): delete it and download again") from None
    with tar:
        members = tar.getmembers()
        for m in members:
            target = _check_member_name(m.name, dest)
            if m.issym():
                link = (target.parent / m.linkname).resolve()
                if PurePosixPath(m.linkname).is_absolute() or not _inside(dest, link):
                    raise DataError(f"archive member {m.name!r} links outside {dest}: refusing to extract this archive")
            elif m.islnk():
                _check_member_name(m.linkname, dest)
            elif not (m.isfile() or m.isdir()):
                raise DataError(f"archive member {m.name!r} is a device or pipe: refusing to extract this archive")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tar.extractall(dest, members=members, **kwargs)
        except tarfile.TarError as e:  # the stdlib filter is a second line of defence
            raise DataError(f"unsafe archive member in {archive}: {e}") from None


def _find_dataset_dir(extracted, name):
    """The folder an archive unpacked to: NAME/, else its single top folder, else the root itself."""
    if (extracted / name).is_dir():
        return extracted / name
    entries = [p for p in extracted.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return extracted


def download_dataset(name, url, dest_dir, timeout=10):
    """Download url (a .zip or .tar.gz) and unpack it as dest_dir/NAME; returns that path.

    Works in dest_dir/.NAME.partial-XXXX and moves the folder into place only when complete, so an
    interrupted or failed download never leaves a half folder behind."""
    from tqdm import tqdm

    dest_dir = Path(dest_dir)
    final = dest_dir / name
    if final.exists():
        raise DataError(f"{final} already exists: delete it to download {name} again, or pass --data {final}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=dest_dir))
    by_hand = (f"download it by hand and unpack it as {final}/ with {LAYOUT_HELP}, or pass --data PATH")
    try:
        archive = tmp / ("archive.zip" if url.endswith(".zip") else "archive.tar.gz")
        try:
            # A fresh opener each call: it reads the proxy settings of the environment now.
            with urllib.request.build_opener().open(url, timeout=timeout) as resp, open(archive, "wb") as f:
                total = int(resp.headers.get("Content-Length") or 0) or None
                got = 0
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}") as bar:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        f.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
            if total is not None and got != total:
                raise DataError(f"download of dataset {name} from {url} stopped after {got} of {total} bytes: "
                                f"try again, or {by_hand}")
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, refused
            reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
            raise DataError(f"could not download dataset {name} from {url} ({reason}): {by_hand}") from None
        try:
            safe_extract(archive, tmp / "extracted")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
            raise DataError(f"the archive of dataset {name} from {url} is damaged ({e}): try again, or {by_hand}") from None
        os.replace(_find_dataset_dir(tmp / "extracted", name), final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_CITY_RE = re.compile(r"^(?:.*/)?(gtFine|leftImg8bit)/(\w+)/(\w+)/(\w+?_\d+_\d+)_(gtFine_color|leftImg8bit)\.png$")


def _zip_members(zip_path, kind):
    """{(split, city_seq_frame): member} for the gtFine colour labels or the leftImg8bit photos of a zip."""
    out = {}
    with zipfile.ZipFile(zip_path) as z:
        for member in z.namelist():
            m = _CITY_RE.match(member)
            if m and m.group(1) == kind:
                out[(m.group(2), m.group(4))] = member
    return out


def prepare_cityscapes(gtfine_zip, leftimg_zip, out_dir, size=256, splits=("train", "val")):
    """Build pix2pix-style Cityscapes folders from the official zips: out_dir/{split}/CITY_SEQ_FRAME.png
    of side-by-side A|B = photo (leftImg8bit) | colour labels (gtFine *_color.png), each half size x size.

    Labels are resized with nearest neighbour so every pixel keeps an exact palette colour. The test
    split's labels are not public (they are blank), hence splits defaults to train and val."""
    from tqdm import tqdm

    gtfine_zip, leftimg_zip, out_dir = Path(gtfine_zip), Path(leftimg_zip), Path(out_dir)
    for p, what in ((gtfine_zip, "--gtfine gtFine_trainvaltest.zip"),
                    (leftimg_zip, "--leftimg leftImg8bit_trainvaltest.zip")):
        if not zipfile.is_zipfile(p):
            raise DataError(f"{p} is not a zip file: pass {what} as downloaded from https://www.cityscapes-dataset.com")
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists: delete it to prepare Cityscapes again")
    labels, photos = _zip_members(gtfine_zip, "gtFine"), _zip_members(leftimg_zip, "leftImg8bit")
    if not labels:
        raise DataError(f"{gtfine_zip} has no gtFine/SPLIT/CITY/*_gtFine_color.png members: "
                        f"pass gtFine_trainvaltest.zip as --gtfine")
    if not photos:
        raise DataError(f"{leftimg_zip} has no leftImg8bit/SPLIT/CITY/*_leftImg8bit.png members: "
                        f"pass leftImg8bit_trainvaltest.zip as --leftimg")
    keys = sorted(k for k in labels.keys() & photos.keys() if k[0] in splits)
    if not keys:
        raise DataError(f"no photo and label share a city_seq_frame in splits {', '.join(splits)}: check the two zips")
    unmatched = len([k for k in photos if k[0] in splits]) - len(keys)
    if unmatched:
        warnings.warn(f"{unmatched} Cityscapes photos have no colour label and are left out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        with zipfile.ZipFile(gtfine_zip) as zl, zipfile.ZipFile(leftimg_zip) as zp:
            for split, key in tqdm(keys, desc="cityscapes", unit="img"):
                with zp.open(photos[(split, key)]) as f:
                    photo = to_rgb(Image.open(f)).resize((size, size), Image.BICUBIC)
                with zl.open(labels[(split, key)]) as f:
                    label = to_rgb(Image.open(f)).resize((size, size), Image.NEAREST)
                pair = Image.new("RGB", (2 * size, size))
                pair.paste(photo, (0, 0))
                pair.paste(label, (size, 0))
                _save_png(pair, tmp / split / f"{key}.png")
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# ------------------------------------------------------------------------------------------------
# 6. Folder checks: --data SPEC -> a validated dataset folder
# ------------------------------------------------------------------------------------------------

def check_layout(root, kind):
    """Raise DataError naming the missing folders when root does not have the layout of kind."""
    root = Path(root)
    if kind == "unaligned":
        missing = [d for d in ("trainA", "trainB", "testA", "testB") if not (root / d).is_dir()]
        expected = "trainA/ trainB/ testA/ testB/ folders of images (unpaired)"
    else:
        missing = [d for d in ("train",) if not (root / d).is_dir()]
        if not (root / "test").is_dir() and not (root / "val").is_dir():
            missing.append("test (or val)")
        expected = "train/ and test/ (or val/) folders of side-by-side A|B images (paired)"
    if missing:
        raise DataError(f"{root} is missing {', '.join(m + '/' for m in missing)}: the {kind} layout is {expected}")
    return root


def aligned_test_phase(root):
    """'test' when root/test exists, else 'val' (several pix2pix sets ship train/ and val/ only)."""
    return "test" if (Path(root) / "test").is_dir() else "val"


def resolve_data(spec, kind, datasets_dir="datasets", seed=0, size=64):
    """--data SPEC -> dataset folder. kind is 'unaligned' (CycleGAN layout) or 'aligned' (pix2pix).

    'synthetic' builds the built-in set; an existing folder is checked; a known dataset name is
    used from datasets_dir/NAME or downloaded there."""
    if kind not in ("unaligned", "aligned"):
        raise ValueError(f"kind must be 'unaligned' or 'aligned', not {kind!r}")
    datasets_dir = Path(datasets_dir)
    spec = str(spec)
    if spec == "synthetic":
        if kind == "unaligned":
            return make_synthetic_objects(datasets_dir / "synthetic_objects", seed=seed, size=size)
        return make_synthetic_labels(datasets_dir / "synthetic_labels", seed=seed, size=size)
    if Path(spec).is_dir():
        return check_layout(Path(spec), kind)
    names = CYCLEGAN_DATASETS if kind == "unaligned" else PIX2PIX_DATASETS
    if spec == "cityscapes":
        if (datasets_dir / "cityscapes").is_dir():
            return check_layout(datasets_dir / "cityscapes", kind)
        raise DataError(CITYSCAPES_HELP.format(out=datasets_dir / "cityscapes"))
    if spec in names:
        local = datasets_dir / spec
        if local.is_dir():
            return check_layout(local, kind)
        url = (CYCLEGAN_URL if kind == "unaligned" else PIX2PIX_URL).format(name=spec)
        return check_layout(download_dataset(spec, url, datasets_dir), kind)
    other = PIX2PIX_DATASETS if kind == "unaligned" else CYCLEGAN_DATASETS
    if spec in other:
        script = "train_supervised.py" if kind == "unaligned" else "train_unpaired.py"
        raise DataError(f"{spec} is a {'paired' if kind == 'unaligned' else 'unpaired'} dataset: train on it with {script}")
    raise DataError(f"--data {spec!r} is neither a folder nor a known dataset: use synthetic, one of "
                    f"{', '.join(names)}, or a folder path with {LAYOUT_HELP}")


# ------------------------------------------------------------------------------------------------
# 7. Pictures: tensors to PNG, attention heat maps, sample grids, index.html
# ------------------------------------------------------------------------------------------------

def tensor_to_pil(t):
    """3 x H x W (or 1 x H x W, or 1 x 3 x H x W) in [-1, 1] -> RGB PIL image."""
    t = t.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return _to_pil((t + 1) / 2)


def save_image(t, path):
    """Save a 3 x H x W tensor in [-1, 1] as PNG (creating folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(t).save(path, "PNG")


# Anchors of a turbo-like colour map: dark blue -> blue -> cyan -> green -> yellow -> orange -> dark red.
_HEAT_ANCHORS = torch.tensor([
    [48, 18, 59], [62, 120, 240], [30, 205, 200], [120, 250, 90], [225, 220, 55], [250, 120, 25], [122, 4, 3],
], dtype=torch.float32) / 255


def heatmap(M, size):
    """Attention map (1 x h x w, or h x w, in [0, 1]) -> 3 x H x W colour image in [-1, 1].

    Upsampled bilinearly to size (int or (H, W)) and coloured with a turbo-like ramp (low = blue)."""
    M = M.detach().float().cpu()
    while M.dim() < 4:
        M = M.unsqueeze(0)
    M = M[:1, :1]
    size = (size, size) if isinstance(size, int) else tuple(size)
    m = nnf.interpolate(M, size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    pos = m * (len(_HEAT_ANCHORS) - 1)
    lo = pos.floor().long().clamp(max=len(_HEAT_ANCHORS) - 2)
    frac = (pos - lo).unsqueeze(-1)
    rgb = _HEAT_ANCHORS[lo] * (1 - frac) + _HEAT_ANCHORS[lo + 1] * frac  # H x W x 3
    return rgb.permute(2, 0, 1) * 2 - 1


def _fit(t, hw):
    t = t.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    if t.shape[0] == 1:
        return heatmap(t, hw)
    if tuple(t.shape[-2:]) != hw:
        t = nnf.interpolate(t[None], size=hw, mode="bilinear", align_corners=False)[0]
    return t


def save_grid(path, rows, labels=None, min_tile=128):
    """Save a PNG grid: rows of 3 x H x W images in [-1, 1]; 1 x h x w maps become heat maps.

    labels (one per column) are written above the columns. Tiles narrower than min_tile pixels are
    enlarged (nearest) so that small images and their labels stay readable."""
    rows = [list(r) for r in rows if len(r)]
    if not rows:
        raise ValueError("save_grid needs at least one non-empty row")
    first = next((t for r in rows for t in r if t.shape[-3] == 3), rows[0][0])
    hw = tuple(first.shape[-2:])
    ncols = max(len(r) for r in rows)
    tiles = []
    for r in rows:
        tiles += [_fit(t, hw) for t in r] + [torch.ones(3, *hw)] * (ncols - len(r))
    scale = max(1, math.ceil(min_tile / hw[1]))
    batch = (torch.stack(tiles) + 1) / 2
    if scale > 1:
        batch = nnf.interpolate(batch, scale_factor=scale, mode="nearest")
    # Tiled by hand rather than with torchvision's make_grid, which drops the padding for one tile.
    pad, (th, tw) = 2, batch.shape[-2:]
    canvas = torch.ones(3, len(rows) * (th + pad) + pad, ncols * (tw + pad) + pad)
    for k, tile in enumerate(batch):
        y, x = pad + (k // ncols) * (th + pad), pad + (k % ncols) * (tw + pad)
        canvas[:, y:y + th, x:x + tw] = tile
    grid = _to_pil(canvas)
    if labels:
        font = ImageFont.load_default()
        draw = ImageDraw.Draw(grid)
        line_h = draw.textbbox((0, 0), "Ag", font=font)[3] + 6
        canvas = Image.new("RGB", (grid.width, grid.height + line_h), (255, 255, 255))
        canvas.paste(grid, (0, line_h))
        draw = ImageDraw.Draw(canvas)
        col_w = tw + pad
        for i, text in enumerate(labels[:ncols]):
            text = str(text)
            while len(text) > 1 and draw.textlength(text, font=font) > col_w - 4:
                text = text[:-2] + "~"  # shorten to the column width
            x = pad + i * col_w + (col_w - pad - draw.textlength(text, font=font)) / 2
            draw.text((x, 3), text, fill=(0, 0, 0), font=font)
        grid = canvas
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, "PNG")
    return path


_LINE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def plot_losses(csv_path, png_path, panels, width=560, height=150):
    """Draw losses.csv as png_path: one panel per (title, [columns]) in panels, each column a line of
    its values smoothed by a centred moving average over about 2 % of the steps (faint: the raw values),
    with the step range below and the value range at the left. PIL only. Columns the CSV lacks are skipped."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        return None
    steps = [int(r["step"]) for r in rows]
    font = ImageFont.load_default()
    pad_l, pad_r, pad_t, pad_b = 58, 10, 20, 16
    im = Image.new("RGB", (width, height * len(panels)), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    half = len(rows) // 100  # the window: 2 half + 1 steps, centred, so the line does not lag
    for k, (title, columns) in enumerate(panels):
        top = k * height
        columns = [c for c in columns if c in rows[0]]
        raw = {c: [float(r[c]) for r in rows] for c in columns}
        smooth = {}
        for c, values in raw.items():
            sums = [0.0]
            for v in values:
                sums.append(sums[-1] + v)
            smooth[c] = [(sums[min(len(values), i + half + 1)] - sums[max(0, i - half)])
                         / (min(len(values), i + half + 1) - max(0, i - half)) for i in range(len(values))]
        everything = [v for vs in raw.values() for v in vs if math.isfinite(v)] or [0.0]
        lo, hi = min(everything), max(everything)
        hi = hi if hi > lo else lo + 1
        x0, x1, y0, y1 = pad_l, width - pad_r, top + pad_t, top + height - pad_b
        draw.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
        draw.text((x0, top + 4), title, fill=(0, 0, 0), font=font)
        draw.text((4, y0), f"{hi:.3g}", fill=(90, 90, 90), font=font)
        draw.text((4, y1 - 10), f"{lo:.3g}", fill=(90, 90, 90), font=font)
        draw.text((x0, y1 + 2), f"step {steps[0]}", fill=(90, 90, 90), font=font)
        last = f"step {steps[-1]}"
        draw.text((x1 - draw.textlength(last, font=font), y1 + 2), last, fill=(90, 90, 90), font=font)
        span = max(1, steps[-1] - steps[0])
        xy = lambda i, v: (x0 + (x1 - x0) * (steps[i] - steps[0]) / span, y1 - (y1 - y0) * (v - lo) / (hi - lo))
        legend_x = x0 + draw.textlength(title, font=font) + 16
        colours = {c: _LINE_COLOURS[j % len(_LINE_COLOURS)] for j, c in enumerate(columns)}
        for series, line in ((raw, 1), (smooth, 2)):  # every faint line under every smooth one
            for c, values in series.items():
                fill = colours[c] if line == 2 else tuple(int(255 - (255 - v) * 0.25) for v in colours[c])
                points = [xy(i, v) for i, v in enumerate(values) if math.isfinite(v)]
                if len(points) > 1:
                    draw.line(points, fill=fill, width=line)
        for c in columns:
            colour = colours[c]
            text = f"{c} = {smooth[c][-1]:.3g}"
            draw.text((legend_x, top + 4), text, fill=colour, font=font)
            legend_x += draw.textlength(text, font=font) + 14
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    im.save(png_path, "PNG")
    return png_path


def _step_of(path):
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else -1


def write_html(run_dir, title):
    """Write run_dir/index.html: losses.png (when there is one), then the PNGs under run_dir/samples/,
    newest step first."""
    run_dir = Path(run_dir)
    pngs = sorted((run_dir / "samples").rglob("*.png"), key=lambda p: (_step_of(p), p.stat().st_mtime, p.name),
                  reverse=True) if (run_dir / "samples").is_dir() else []
    parts = [f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1em} img{image-rendering:pixelated;max-width:100%}</style>",
             f"</head><body>\n<h1>{html.escape(title)}</h1>"]
    if (run_dir / "losses.png").exists():
        parts.append("<h3>losses (smoothed; w_range: how much of D's map reached the generator)</h3>"
                     "<img src='losses.png' alt='losses.png'>")
    if not pngs:
        parts.append("<p>No samples yet.</p>")
    for p in pngs:
        rel = p.relative_to(run_dir).as_posix()
        step = _step_of(p)
        heading = f"step {step}" if step >= 0 else p.stem
        parts.append(f"<h3>{html.escape(heading)} <small>({html.escape(rel)})</small></h3>"
                     f"<img src='{html.escape(rel, quote=True)}' alt='{html.escape(rel, quote=True)}'>")
    parts.append("</body></html>\n")
    out = run_dir / "index.html"
    run_dir.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out


# ------------------------------------------------------------------------------------------------
# Command line: dataset preparation
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# 8. Loaders the training scripts share
# ------------------------------------------------------------------------------------------------

def training_io(dataset, model, opt, run, device):
    """What asgit.fit takes from the files: the batches of an epoch from a position on (in batches),
    how many batches an epoch has, and the pictures of a step (sample grid, losses.png, index.html)."""
    def pictures(step):
        model.save_samples(Path(run) / "samples" / f"step_{step:07d}.png")
        plot_losses(Path(run) / "losses.csv", Path(run) / "losses.png", model.loss_panels)
        write_html(run, opt.name)

    def batches(epoch, position):
        return make_loader(dataset, opt.batch_size, opt.seed, epoch, position * opt.batch_size, opt.workers, device)

    return {"batches": batches, "per_epoch": math.ceil(len(dataset) / opt.batch_size), "pictures": pictures}


def _ignore_ctrl_c(_worker_id):
    # Ctrl-C reaches the whole process group; the main process saves and stops the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset, batch_size, seed, epoch, start, workers, device):
    """Training batches of one epoch from position `start` on, in the seeded order of EpochSampler.
    The loader draws its worker seeds from its own generator, not the global RNG, so a resumed
    run's random numbers (dropout) follow the same stream as an uninterrupted one."""
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), seed, epoch, start),
                      num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=_ignore_ctrl_c,
                      generator=torch.Generator().manual_seed(seed))


class FolderImages(Dataset):
    """Every readable image of one folder, resized to size x size, for the test phase:
    {"image": 3 x size x size in [-1, 1], "file": the file name, "name": the output name (.png)}.
    Unreadable files are named in a warning and left out."""

    def __init__(self, folder, size):
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder: give a folder of images")
        self.paths, self.size = [], size
        for path in list_images(folder):
            try:
                load_rgb(path)
            except UnreadableImage as e:
                warnings.warn(str(e))
                continue
            self.paths.append(path)
        if not self.paths:
            raise DataError(f"{folder} has no readable images ({', '.join(sorted(IMG_EXTENSIONS))})")

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        image, _ = apply_cut(load_rgb(path), None, self.size, self.size, train=False)
        return {"image": image, "file": path.name, "name": path.stem + ".png"}


def make_test_loader(folder, size, workers, device, batch_size=8):
    return DataLoader(FolderImages(folder, size), batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda")


def is_synthetic(root):
    """A built-in synthetic set, whose true translations are known."""
    return (Path(root) / "SYNTHETIC.json").exists()


def load_truths(root, phase_dir, files, size):
    """load_truth for a batch of file names: (N x 3 x size x size, N x 1 x size x size bool)."""
    pairs = [load_truth(root, phase_dir, f, size) for f in files]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def translate_images(translate, src, out_dir, multiple, shorter=None):
    """--translate SRC, a folder of images or one image: each image through translate (N x 3 x H x W in
    [-1, 1] -> the same) at its own size and aspect, or with its shorter side resized to `shorter`
    (--translate-size), into out_dir as PNG with the same stem. The generators need sides divisible by
    `multiple`: the image is padded by reflection (by repetition where it is too small to mirror) on the
    right and bottom, translated, and cropped back. Unreadable files are named and skipped."""
    src, out_dir = Path(src), Path(out_dir)
    if src.is_file():
        paths = [src]
    elif src.is_dir():
        paths = list_images(src)
        if not paths:
            raise DataError(f"--translate {src} has no images ({', '.join(sorted(IMG_EXTENSIONS))})")
    else:
        raise DataError(f"--translate {src}: no such file or folder")
    TF, count = _tf(), 0
    for path in paths:
        try:
            im = load_rgb(path)
        except UnreadableImage as e:
            warnings.warn(f"skipping unreadable image {path}: {e.reason}")
            continue
        if shorter:
            w, h = im.size
            scale = shorter / min(w, h)
            im = TF.resize(im, [max(1, round(h * scale)), max(1, round(w * scale))],
                           interpolation=TF.InterpolationMode.BICUBIC)
        x = pil_to_tensor(im)[None]  # 1 x 3 x h x w
        h, w = x.shape[-2:]
        ph, pw = -h % multiple, -w % multiple
        mode = "reflect" if ph < h and pw < w else "replicate"
        padded = nnf.pad(x, (0, pw, 0, ph), mode=mode)  # 1 x 3 x (h + ph) x (w + pw)
        save_image(translate(padded)[0, :, :h, :w], out_dir / f"{path.stem}.png")
        count += 1
    if not count:
        raise DataError(f"--translate {src}: no image could be read")
    print(f"translated {count} image{'s' if count != 1 else ''} from {src} into {out_dir}")
    return count


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Prepare ASGIT datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cityscapes", help="build pix2pix-style photo|label folders from the official Cityscapes zips")
    c.add_argument("--gtfine", required=True, help="gtFine_trainvaltest.zip")
    c.add_argument("--leftimg", required=True, help="leftImg8bit_trainvaltest.zip")
    c.add_argument("--out", default="datasets/cityscapes", help="output folder (default: %(default)s)")
    c.add_argument("--size", type=int, default=256, help="side of each half in pixels (default: %(default)s)")
    s = sub.add_parser("synthetic", help="write a synthetic dataset")
    s.add_argument("kind", choices=["objects", "labels"])
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=64)
    d = sub.add_parser("download", help="download a named CycleGAN (unaligned) or pix2pix (aligned) dataset")
    d.add_argument("name")
    d.add_argument("--kind", choices=["unaligned", "aligned"], default="unaligned")
    d.add_argument("--datasets-dir", default="datasets")
    args = parser.parse_args()
    try:
        if args.command == "cityscapes":
            print(prepare_cityscapes(args.gtfine, args.leftimg, args.out, size=args.size))
        elif args.command == "synthetic":
            make = make_synthetic_objects if args.kind == "objects" else make_synthetic_labels
            print(make(args.out, seed=args.seed, size=args.size))
        else:
            print(resolve_data(args.name, args.kind, args.datasets_dir))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
