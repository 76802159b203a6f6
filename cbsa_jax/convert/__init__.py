"""Checkpoints of others, in `cbsa_jax` models.

- `cbsa_jax.convert.formats`: torch's `.pth` zip format (read without torch), `.safetensors`,
  big_vision / AugReg `.npz`: flat `{key: numpy array}`;
- `cbsa_jax.convert.mapping`: `assign`, a checked key map from such a dict into an NNX model;
- `cbsa_jax.convert.official`: the official PyTorch CBT / CRATE / ToST classifiers
  (`cbt_from_torch`, `reference_from_torch`) and the CBT segmentation decoder
  (`cbt_decoder_from_torch`);
- `cbsa_jax.convert.timm`: pretrained timm / AugReg / big_vision ViTs (`vit_from_timm`), their
  adaptation to pooled-query attention (`adapt`) and timm's layout back out (`save_timm`).

Every public name of these modules is importable from `cbsa_jax.convert` itself.
"""

from cbsa_jax.convert import formats, mapping, official, timm
from cbsa_jax.convert.formats import (
    load_npz,
    load_safetensors,
    load_torch_state_dict,
    save_safetensors,
)
from cbsa_jax.convert.mapping import assign
from cbsa_jax.convert.official import (
    CBT_DECODER_CELLS,
    cbt_decoder_from_torch,
    cbt_decoder_key_map,
    cbt_from_torch,
    reference_from_torch,
    torch_key_map,
)
from cbsa_jax.convert.timm import (
    LAYOUTS,
    adapt,
    augreg_key_map,
    detect_layout,
    load_vit,
    load_vit_weights,
    resample_pos_embedding,
    save_timm,
    timm_key_map,
    timm_state_dict,
    vit_config_from_weights,
    vit_from_timm,
)

__all__ = [
    "formats",
    "mapping",
    "official",
    "timm",
    "assign",
    "load_npz",
    "load_safetensors",
    "load_torch_state_dict",
    "save_safetensors",
    "CBT_DECODER_CELLS",
    "cbt_decoder_from_torch",
    "cbt_decoder_key_map",
    "cbt_from_torch",
    "reference_from_torch",
    "torch_key_map",
    "LAYOUTS",
    "adapt",
    "augreg_key_map",
    "detect_layout",
    "load_vit",
    "load_vit_weights",
    "resample_pos_embedding",
    "save_timm",
    "timm_key_map",
    "timm_state_dict",
    "vit_config_from_weights",
    "vit_from_timm",
]
