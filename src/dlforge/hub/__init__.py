"""Checkpoint files: Hugging Face Hub ids through the local cache, weight files (safetensors, shards; pickles of
anything but tensors refused) and the JSON files of model folders. Model classes and the conversion of checkpoints
into them live in `dlforge.models` (`load_pretrained`, `Model.from_pretrained`)."""

from .download import hub_snapshot, parse_hub_id
from .json_files import read_json_object
from .weights import deduplicated_state_dict, load_into, load_state_dict, save_state_dict

__all__ = ["deduplicated_state_dict", "hub_snapshot", "load_into", "load_state_dict", "parse_hub_id",
           "read_json_object", "save_state_dict"]
