"""The diffusers methods that take files or a Hub repo, or write a folder, and where those arguments are.

A remote call whose method is listed here goes through :func:`safeloader.assets.calls.call_with_assets`:
its path or repo arguments are resolved by the caller and replaced by a private copy in the worker, and
its destination folder is replaced by a private folder the caller copies back from. Any call's
``output_dir=`` keyword is treated as a destination too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: ``weights``: a file, folder or repo holding weights (``weight_name``/``subfolder`` pick inside it);
#: ``single_file``: one checkpoint file, a Hub URL to one, or a repo with ``weight_name``;
#: ``config``: a folder or repo whose configuration files (no weights) are read;
#: ``output``: a folder the method writes.
Role = Literal["weights", "single_file", "config", "output"]

#: Keyword arguments that steer a Hub download; the caller consumes them, the worker never sees them.
HUB_KWARGS = ("revision", "cache_dir", "force_download", "proxies", "local_files_only")
#: Keyword arguments whose files the caller copies back after any call.
OUTPUT_KWARGS = ("output_dir",)


@dataclass(frozen=True)
class AssetParameter:
    name: str
    #: Index among the positional arguments (after ``self``), ``None`` for keyword-only arguments.
    position: int | None
    role: Role


@dataclass(frozen=True)
class AssetMethod:
    name: str
    parameters: tuple[AssetParameter, ...]
    #: Keyword (and position) naming the file inside a folder or repo; may be a list parallel to the sources.
    weight_name: tuple[str, int | None] | None = ("weight_name", None)
    subfolder: tuple[str, int | None] | None = ("subfolder", None)
    #: The keyword carrying the Hub token (``load_textual_inversion`` uses ``token`` for the placeholder).
    hub_token: str = "token"
    #: File names the method looks for when no ``weight_name`` is given.
    default_weight_names: tuple[str, ...] = ()
    #: Extra folders the method reads below ``subfolder`` (``load_ip_adapter``'s image encoder).
    extra_folder: tuple[str, str | None] | None = None


_LORA_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")

ASSET_METHODS: dict[str, AssetMethod] = {
    method.name: method
    for method in (
        AssetMethod(
            "load_lora_weights",
            (AssetParameter("pretrained_model_name_or_path_or_dict", 0, "weights"),),
            default_weight_names=_LORA_NAMES,
        ),
        AssetMethod(
            "lora_state_dict",
            (AssetParameter("pretrained_model_name_or_path_or_dict", 0, "weights"),),
            default_weight_names=_LORA_NAMES,
        ),
        AssetMethod(
            "load_attn_procs",
            (AssetParameter("pretrained_model_name_or_path_or_dict", 0, "weights"),),
            default_weight_names=_LORA_NAMES,
        ),
        AssetMethod(
            "load_textual_inversion",
            (AssetParameter("pretrained_model_name_or_path", 0, "weights"),),
            hub_token="hf_token",
            default_weight_names=("learned_embeds.safetensors", "learned_embeds.bin"),
        ),
        AssetMethod(
            "load_ip_adapter",
            (AssetParameter("pretrained_model_name_or_path_or_dict", 0, "weights"),),
            weight_name=("weight_name", 2),
            subfolder=("subfolder", 1),
            extra_folder=("image_encoder_folder", "image_encoder"),
        ),
        AssetMethod(
            "from_single_file",
            (
                AssetParameter("pretrained_model_link_or_path", 0, "single_file"),
                AssetParameter("config", None, "config"),
                AssetParameter("original_config", None, "single_file"),
            ),
            subfolder=None,
        ),
        AssetMethod("save_pretrained", (AssetParameter("save_directory", 0, "output"),), None, None),
        AssetMethod("save_lora_weights", (AssetParameter("save_directory", 0, "output"),), None, None),
        AssetMethod("save_attn_procs", (AssetParameter("save_directory", 0, "output"),), None, None),
        AssetMethod("save_config", (AssetParameter("save_directory", 0, "output"),), None, None),
    )
}


def asset_method(name: str | None) -> AssetMethod | None:
    return ASSET_METHODS.get(name) if name is not None else None
