"""Make the "existing model" when none is at hand: pretrain an embedcluster encoder with labels
(supervised on a source task) or without (autoencoder, SimCLR-style contrastive).

Save the result with ``embedcluster.encoders.save_checkpoint(encoder, directory,
encoder.config)`` (``config.json`` + ``model.safetensors``, never pickle): ``encoder.config`` is
the complete model config, defaults filled in, so the checkpoint does not depend on defaults.

Inputs are numpy arrays or tensors. uint8 arrays (images) are scaled to [0, 1]; other dtypes
are converted to float32 once and used as they are. Rows are reshaped to the model's
``in_shape`` when the sizes agree (a flat ``(n, 64)`` digits array feeds a ``[1, 8, 8]`` CNN).
:func:`encode` applies the same conversion when embedding, so train and use agree.

Reproducibility: each function seeds its own ``torch.Generator`` (initialisation, shuffling,
augmentations) inside ``torch.random.fork_rng``, so the caller's global RNG is left untouched,
and enables ``torch.use_deterministic_algorithms`` for the run. Shuffling draws
``torch.randperm(n, generator=g)`` and slices in-memory tensors: the same order a
``DataLoader(shuffle=True, generator=g)`` would give, without its per-item collation cost.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .models import LayerSpec, model_from_config, normalize_config, with_layer

logger = logging.getLogger("embedcluster")

ArrayLike = Union[np.ndarray, torch.Tensor]


# ----------------------------------------------------------------------------- input handling
def as_input_tensor(X: ArrayLike, in_shape: Sequence[int]) -> torch.Tensor:
    """float32 tensor ``(n, *in_shape)`` from an array: uint8 is scaled to [0, 1], anything else
    is converted to float32 as is; rows are reshaped when their size matches ``in_shape``."""
    t = torch.from_numpy(np.ascontiguousarray(X)) if isinstance(X, np.ndarray) else X
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"X should be a numpy array or a torch tensor, got {type(X).__name__}")
    if t.dtype == torch.uint8:
        t = t.to(torch.float32) / 255.0
    elif t.dtype != torch.float32:
        t = t.to(torch.float32)
    size = math.prod(in_shape)
    if t.dim() < 2 or math.prod(t.shape[1:]) != size:
        raise ValueError(f"X of shape {tuple(t.shape)} does not fit in_shape={list(in_shape)}; "
                         f"each row should hold {size} values")
    return t.reshape(t.shape[0], *in_shape)


def _labels_to_index(y: ArrayLike, n: int) -> Tuple[torch.Tensor, np.ndarray]:
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y should be 1-D with one label per row of X (n={n}), got shape {y.shape}")
    classes, idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y has {len(classes)} class; supervised pretraining needs at least 2")
    return torch.from_numpy(idx.astype(np.int64)), classes


# ----------------------------------------------------------------------------- run context
@contextlib.contextmanager
def _run_context(seed: int, num_threads: Optional[int]) -> Iterator[torch.Generator]:
    """Seeded, deterministic, thread-limited scope that restores the caller's global state."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        try:
            g = torch.Generator()
            g.manual_seed(seed)
            yield g
        finally:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            torch.set_num_threads(prev_threads)


def _batches(n: int, batch_size: int, g: torch.Generator) -> List[torch.Tensor]:
    """Shuffled index batches; a trailing batch of one row is dropped (batch norm needs two)."""
    perm = torch.randperm(n, generator=g)
    out = list(torch.split(perm, batch_size))
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()
    return out


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety; logging still reports every epoch
        return None
    return tqdm(total=total, desc=desc, unit="epoch", leave=False)


def _training_input(X: ArrayLike, model_config: Dict[str, Any], epochs: int, batch_size: int, lr: float,
                    time_budget_s: Optional[float]) -> Tuple[Dict[str, Any], torch.Tensor]:
    """The training settings every pretraining shares checked, then the model config
    normalised and the input as a tensor of its ``in_shape`` (at least two rows)."""
    if int(epochs) < 1:
        raise ValueError(f"epochs={epochs} should be >= 1")
    if int(batch_size) < 2:
        raise ValueError(f"batch_size={batch_size} should be >= 2")
    if not lr > 0:
        raise ValueError(f"lr={lr} should be > 0")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s={time_budget_s} should be > 0 or None")
    config = normalize_config(model_config)
    Xt = as_input_tensor(X, config["in_shape"])
    if len(Xt) < 2:
        raise ValueError(f"n_samples={len(Xt)} should be >= 2")
    return config, Xt


def _train_loop(
    params: List[nn.Parameter],
    modules: List[nn.Module],
    n: int,
    step,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    g: torch.Generator,
    time_budget_s: Optional[float],
    progress: bool,
    desc: str,
) -> Dict[str, Any]:
    """Runs AdamW over shuffled batches; ``step(idx) -> (loss, extras)``. Stops between batches
    once ``time_budget_s`` is spent (after at least one batch)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history: Dict[str, Any] = {"loss": [], "epochs_run": 0, "stopped_early": False}
    t0 = time.perf_counter()
    bar = _progress(epochs, desc, progress)
    try:
        for epoch in range(int(epochs)):
            for m in modules:
                m.train()
            total, count = 0.0, 0
            extras_sum: Dict[str, float] = {}
            for idx in _batches(n, int(batch_size), g):
                loss, extras = step(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                for k, v in extras.items():
                    extras_sum[k] = extras_sum.get(k, 0.0) + v
                if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                    history["stopped_early"] = True
                    break
            history["loss"].append(total / count)
            for k, v in extras_sum.items():
                history.setdefault(k, []).append(v / count)
            history["epochs_run"] = epoch + 1
            logger.info("%s epoch %d/%d loss %.4f", desc, epoch + 1, epochs, history["loss"][-1])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
            if history["stopped_early"]:
                logger.info("%s stopped after %.1f s (time_budget_s=%s)", desc,
                            time.perf_counter() - t0, time_budget_s)
                break
    finally:
        if bar is not None:
            bar.close()
    history["seconds"] = time.perf_counter() - t0
    return history


def _device(device: Optional[str]) -> torch.device:
    return torch.device(device or "cpu")


# ----------------------------------------------------------------------------- supervised
def pretrain_supervised(
    X: ArrayLike,
    y: ArrayLike,
    model_config: Dict[str, Any],
    *,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    weight_decay: float = 1e-4,
    time_budget_s: Optional[float] = None,
    progress: bool = True,
    num_threads: Optional[int] = None,
    device: Optional[str] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Trains an encoder plus a linear head with cross-entropy on a labeled source task.

    Parameters
    ----------
    X : array (n, *in_shape) or (n, prod(in_shape))
        Source inputs; uint8 is scaled to [0, 1].
    y : array (n,)
        Labels of any type; they are mapped to 0..C-1 (``history["classes"]`` keeps the map).
    model_config : dict
        Config for :func:`embedcluster.models.model_from_config`.
    epochs, batch_size, lr, weight_decay
        AdamW training settings.
    seed : int
        Seeds initialisation and shuffling; the same seed gives bit-identical weights on the
        same machine and thread count.
    time_budget_s : float, optional
        Stop between batches once this many seconds are spent.
    progress : bool
        Show a tqdm bar over epochs (when tqdm is installed).
    num_threads : int, optional
        torch intra-op threads for this call (restored afterwards).
    device : str, optional
        ``"cpu"`` (default) or e.g. ``"cuda"``; the returned encoder is on the CPU.

    Returns
    -------
    encoder : torch.nn.Module
        The trained encoder without the head, in eval mode, on the CPU.
    history : dict
        ``loss`` and ``accuracy`` (training, per epoch), ``epochs_run``, ``stopped_early``,
        ``seconds``, ``classes``.

    Notes
    -----
    The head is discarded, and the encoder's last layer is the one most tuned to the source
    classes; for transfer to other classes also try ``features(x, "penultimate")`` or
    ``"concat"`` (see :mod:`embedcluster.models`).
    """
    config, Xt = _training_input(X, model_config, epochs, batch_size, lr, time_budget_s)
    yt, classes = _labels_to_index(y, len(Xt))
    dev = _device(device)
    with _run_context(seed, num_threads) as g:
        encoder = model_from_config(config).to(dev)
        head = nn.Linear(config["embed_dim"], len(classes)).to(dev)

        def step(idx):
            xb, yb = Xt[idx].to(dev), yt[idx].to(dev)
            logits = head(encoder(xb))
            loss = F.cross_entropy(logits, yb)
            correct = float((logits.argmax(1) == yb).sum())
            return loss, {"accuracy": correct}

        history = _train_loop(
            [*encoder.parameters(), *head.parameters()], [encoder, head], len(Xt), step,
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, g=g,
            time_budget_s=time_budget_s, progress=progress, desc="pretrain supervised")
    history["classes"] = classes
    return encoder.cpu().eval(), history


# ----------------------------------------------------------------------------- augmentations
def _image_augment(x: torch.Tensor, g: torch.Generator, scale: float,
                   opts: Dict[str, float]) -> torch.Tensor:
    """Batched image augmentation in torch: random crop (pad + shift), small random affine
    (rotation and scale), gaussian noise, random erasing. ``x`` is (n, C, H, W)."""
    n, c, h, w = x.shape
    dev = x.device
    p = int(opts["pad"]) if opts["pad"] >= 1 else max(1, round(opts["pad"] * min(h, w)))
    if p > 0:  # random crop: zero-pad by p, then take an (h, w) window at a random offset
        xp = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g).to(dev)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :]
        x = xp[torch.arange(n, device=dev)[:, None, None, None],
               torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if opts["rotate_deg"] > 0 or opts["scale"] > 0:
        ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(opts["rotate_deg"])
        s = 1 + (torch.rand(n, generator=g) * 2 - 1) * opts["scale"]
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1),
                             torch.stack([sin, cos, torch.zeros(n)], 1)], 1).to(dev, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if opts["noise"] > 0:
        x = x + torch.randn(x.shape, generator=g).to(dev) * (opts["noise"] * scale)
    if opts["erase_p"] > 0:  # random erasing: a rectangle of 2-15 % of the area set to zero
        area = (0.02 + torch.rand(n, generator=g) * 0.13) * h * w
        aspect = torch.exp((torch.rand(n, generator=g) * 2 - 1) * math.log(3))
        eh = (area * aspect).sqrt().clamp(1, h).round()
        ew = (area / aspect).sqrt().clamp(1, w).round()
        y0 = (torch.rand(n, generator=g) * (h - eh + 1)).floor()
        x0 = (torch.rand(n, generator=g) * (w - ew + 1)).floor()
        on = torch.rand(n, generator=g) < opts["erase_p"]
        ar_h, ar_w = torch.arange(h)[None, :], torch.arange(w)[None, :]
        in_r = (ar_h >= y0[:, None]) & (ar_h < (y0 + eh)[:, None])
        in_c = (ar_w >= x0[:, None]) & (ar_w < (x0 + ew)[:, None])
        mask = (in_r[:, :, None] & in_c[:, None, :] & on[:, None, None])[:, None].to(dev)
        x = x.masked_fill(mask, 0.0)
    return x


def _vector_augment(x: torch.Tensor, g: torch.Generator, std: torch.Tensor,
                    opts: Dict[str, float]) -> torch.Tensor:
    """Gaussian noise (``noise`` × each feature's std) and feature dropout (zeroing, no rescale)."""
    flat = x.reshape(x.shape[0], -1)
    if opts["noise"] > 0:
        flat = flat + torch.randn(flat.shape, generator=g).to(x.device) * (opts["noise"] * std)
    if opts["feature_dropout"] > 0:
        keep = (torch.rand(flat.shape, generator=g) >= opts["feature_dropout"]).to(x.device)
        flat = flat * keep
    return flat.reshape(x.shape)


_IMAGE_AUG = {"pad": 0.125, "rotate_deg": 10.0, "scale": 0.1, "noise": 0.05, "erase_p": 0.5}
_VECTOR_AUG = {"noise": 0.3, "feature_dropout": 0.2}


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over the 2B views of a batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b = len(z1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- self-supervised
def pretrain_self_supervised(
    X: ArrayLike,
    model_config: Dict[str, Any],
    method: str = "autoencoder",
    *,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    weight_decay: float = 1e-4,
    temperature: float = 0.5,
    projection_dim: int = 64,
    image_shape: Optional[Sequence[int]] = None,
    augment: Optional[Dict[str, float]] = None,
    time_budget_s: Optional[float] = None,
    progress: bool = True,
    num_threads: Optional[int] = None,
    device: Optional[str] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Trains an encoder without labels.

    Parameters
    ----------
    X : array (n, *in_shape) or (n, prod(in_shape))
        Unlabeled inputs; uint8 is scaled to [0, 1].
    model_config : dict
        Config for :func:`embedcluster.models.model_from_config`.
    method : {"autoencoder", "contrastive"}
        ``"autoencoder"``: an MLP decoder (the mirror of the encoder's dense widths; ``[256]``
        for a CNN) reconstructs the flattened input under mean squared error.
        ``"contrastive"``: SimCLR. Two augmented views of each row go through the encoder and
        a 2-layer projection head; NT-Xent with ``temperature`` pulls the views together.
        The embedding is the encoder output (before the head, as in SimCLR).
    temperature, projection_dim
        NT-Xent temperature and projection-head output width (contrastive only).
    image_shape : sequence of int, optional
        ``(C, H, W)`` or ``(H, W)`` for image augmentations when the model's ``in_shape`` is
        flat (an MLP on flattened pixels). A 2-D/3-D ``in_shape`` implies images already.
    augment : dict, optional
        Overrides of the augmentation strengths. Images: ``pad`` (crop shift, pixels, or a
        fraction of the side when < 1; default 0.125), ``rotate_deg`` (10), ``scale`` (0.1),
        ``noise`` (0.05 × the data's std), ``erase_p`` (0.5). Vectors: ``noise`` (0.3 × each
        feature's std), ``feature_dropout`` (0.2).
    epochs, batch_size, lr, weight_decay, seed, time_budget_s, progress, num_threads, device
        As in :func:`pretrain_supervised`.

    Returns
    -------
    encoder : torch.nn.Module
        The trained encoder (eval mode, CPU).
    history : dict
        ``loss`` per epoch, ``epochs_run``, ``stopped_early``, ``seconds``, ``method``.
    """
    if method not in ("autoencoder", "contrastive"):
        raise ValueError(f"method={method!r} should be 'autoencoder' or 'contrastive'")
    if method == "contrastive" and not temperature > 0:
        raise ValueError(f"temperature={temperature} should be > 0")
    config, Xt = _training_input(X, model_config, epochs, batch_size, lr, time_budget_s)
    n_in = math.prod(config["in_shape"])
    shape = list(image_shape) if image_shape is not None else (
        config["in_shape"] if len(config["in_shape"]) > 1 else None)
    if shape is not None:
        if len(shape) == 2:
            shape = [1, *shape]
        if len(shape) != 3 or math.prod(shape) != n_in:
            raise ValueError(f"image_shape={list(image_shape or shape)} should be (C, H, W) or "
                             f"(H, W) with {n_in} values, to match in_shape={config['in_shape']}")
    opts = dict(_IMAGE_AUG if shape is not None else _VECTOR_AUG)
    if augment:
        unknown = sorted(set(augment) - set(opts))
        if unknown:
            raise ValueError(f"unknown augment key(s) {unknown}; allowed: {sorted(opts)}")
        opts.update({k: float(v) for k, v in augment.items()})
    dev = _device(device)
    data_std = float(Xt.std())
    feat_std = Xt.reshape(len(Xt), -1).std(0).to(dev)

    with _run_context(seed, num_threads) as g:
        encoder = model_from_config(config).to(dev)
        e = config["embed_dim"]
        if method == "autoencoder":
            widths = list(reversed(config["hidden"])) if config["arch"] == "mlp" else [256]
            head = _mlp([e, *widths, n_in]).to(dev)

            def step(idx):
                xb = Xt[idx].to(dev)
                recon = head(encoder(xb))
                return F.mse_loss(recon, xb.reshape(len(idx), -1)), {}
        else:
            head = _mlp([e, e, int(projection_dim)]).to(dev)

            def view(xb):
                if shape is None:
                    return _vector_augment(xb, g, feat_std, opts)
                img = xb.reshape(len(xb), *shape)
                return _image_augment(img, g, data_std, opts).reshape(xb.shape)

            def step(idx):
                xb = Xt[idx].to(dev)
                z1, z2 = head(encoder(view(xb))), head(encoder(view(xb)))
                return _nt_xent(z1, z2, temperature), {}

        history = _train_loop(
            [*encoder.parameters(), *head.parameters()], [encoder, head], len(Xt), step,
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, g=g,
            time_budget_s=time_budget_s, progress=progress, desc=f"pretrain {method}")
    history["method"] = method
    return encoder.cpu().eval(), history


# ----------------------------------------------------------------------------- embedding
@torch.no_grad()
def encode(
    module: nn.Module,
    X: ArrayLike,
    *,
    layer: LayerSpec | None = None,
    batch_size: int = 1024,
    device: Optional[str] = None,
) -> np.ndarray:
    """Embeds ``X`` with an embedcluster encoder (eval mode), as float32 ``(n, width)``.

    Input conversion is the one used in training (uint8 → [0, 1], reshape to ``in_shape``).
    ``layer`` picks the layer (see :mod:`embedcluster.models`); None means the embedding.
    """
    config = getattr(module, "config", None)
    if config is None:
        raise ValueError("encode needs an embedcluster encoder (with a .config); for other "
                         "modules use embedcluster.encoders")
    Xt = as_input_tensor(X, config["in_shape"])
    dev = _device(device)
    net = with_layer(module, layer).to(dev)
    was_training = net.training
    net.eval()
    try:
        outs = [net(Xt[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(Xt), batch_size)]
    finally:
        net.train(was_training)
    if not outs:
        encoder: Any = module  # an embedcluster encoder (it has a config), so it has layer_dim
        return np.zeros((0, encoder.layer_dim(layer or "embedding")), np.float32)
    return torch.cat(outs).numpy()


__all__ = ["pretrain_supervised", "pretrain_self_supervised", "encode", "as_input_tensor"]
