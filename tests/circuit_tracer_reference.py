"""Run circuit-tracer's ``attribute`` on a local model folder and an llmri circuit-tracer export; save its
graph for tests/test_circuit_tracer_interop.py. Runs under an interpreter that has ``circuit-tracer``
installed (it pins transformers ≤ 4.57, so usually not llmri's own environment).

    python circuit_tracer_reference.py MODEL_DIR TRANSCODERS_DIR "id,id,..." OUT.safetensors
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def readable_copy(folder: Path, into: Path) -> Path:
    """The model folder as older transformers read it: rope_theta at the top level, a fast tokenizer class."""
    for f in folder.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json"):
            (into / f.name).symlink_to(f.resolve())
    cfg = json.loads((folder / "config.json").read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    if "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
        cfg["rope_scaling"] = None
    (into / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    for k in ("backend", "is_local", "local_files_only"):
        tok.pop(k, None)
    (into / "tokenizer_config.json").write_text(json.dumps(tok))
    return into


def main(model_dir: str, tc_dir: str, ids: str, out: str) -> None:
    import yaml
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model import ReplacementModel
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    cfg = yaml.safe_load((Path(tc_dir) / "config.yaml").read_text())
    paths = {int(f.stem.split("_")[1]): str(f) for f in Path(tc_dir).glob("layer_*.safetensors")}
    tcs = load_transcoder_set(paths, scan=str(tc_dir), feature_input_hook=cfg["feature_input_hook"],
                              feature_output_hook=cfg["feature_output_hook"], device=torch.device("cpu"),
                              dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    tmp = Path(tempfile.mkdtemp())
    try:
        model = ReplacementModel.from_pretrained_and_transcoders(str(readable_copy(Path(model_dir), tmp)), tcs,
                                                                 backend="nnsight", device=torch.device("cpu"),
                                                                 dtype=torch.float32)
        input_ids = torch.tensor([int(x) for x in ids.split(",")])
        g = attribute(input_ids, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=64,
                      max_feature_nodes=None, verbose=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    af, sel = g.active_features.long(), g.selected_features.long()
    save_file({"adjacency": g.adjacency_matrix.float().contiguous(), "features": af[sel].contiguous(),
               "logit_tokens": g.logit_token_ids.long().contiguous(),
               "logit_probs": g.logit_probabilities.float().contiguous()}, out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
