"""STAND-IN for NeMo's container scripts: a test fixture, not NeMo. It trains nothing.

``tests/nemo_standin/NeMo/`` mirrors the script paths of ``/opt/NeMo`` in NVIDIA's containers;
each file there calls :func:`main`. Point ``nemo.root`` at that directory (with
``NEMO_STANDIN_PROFILE`` set to the container profile) and the pipeline's rendered commands run
against these scripts instead of NeMo. What they do:

- accept exactly the argv / Hydra overrides the profile's real script accepts, by the separate
  table in ``expectations.py``: argparse errors for converters, Hydra's own parser and struct
  rules (``Could not override ...``) for the Hydra scripts, then the checks NeMo and Megatron
  make at start-up (mandatory keys, PEFT scheme, LoRA targets, batch divisibility, prompt
  template, TP/PP of the adapter at evaluation, resume candidates);
- write NeMo-shaped outputs: a ``.nemo`` tar with ``model_config.yaml``, ``-last``/top-k
  checkpoints with NeMo's names and ``-unfinished`` markers, the adapter ``.nemo``,
  ``<prefix>_test_<name>_inputs_preds_labels.jsonl``, index files where NeMo puts them, and
  NeMo-style log lines;
- fail on demand: ``NEMO_STANDIN_OOM_ABOVE_MICRO=N`` raises a CUDA OOM when the micro batch
  exceeds N, at start-up or, with ``NEMO_STANDIN_OOM_AT_STEP=S``, at step S (the first long
  batch of a run without pad_to_max_length, after checkpoints were saved); ``NEMO_STANDIN_KILL_AT_STEP=S`` dies (exit 137) while saving step S, leaving two
  ``-last`` checkpoints as a killed job does; ``NEMO_STANDIN_GPU=8.0`` says a GPU of that compute
  capability is present (none otherwise).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.nemo_standin import expectations as ex

ROOT = Path(__file__).resolve().parent / "NeMo"


def log(message: str, level: str = "I", where: str = "standin:1") -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"[NeMo {level} {stamp} {where}] {message}", flush=True)


def rank() -> int:
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def gpu_capability() -> float | None:
    value = os.environ.get("NEMO_STANDIN_GPU")
    return float(value) if value else None


def main(script_file: str, argv: list[str]) -> int:
    relative = Path(script_file).resolve().relative_to(ROOT).as_posix()
    profile = os.environ.get("NEMO_STANDIN_PROFILE", "")
    if profile not in ex.PROFILES:
        print(f"NEMO_STANDIN_PROFILE={profile!r}: set it to one of {', '.join(ex.PROFILES)}", file=sys.stderr)
        return 2
    from tests.nemo_standin.standin_train import finetune, generate

    try:
        if relative == ex.FINETUNE_SCRIPT:
            return finetune(profile, argv)
        if relative == ex.GENERATE_SCRIPT:
            return generate(profile, argv)
        if relative in ex.CONVERTERS[profile]:
            return convert(profile, relative, argv)
    except StandinError as error:
        print(f"Error executing job with overrides: {argv}", file=sys.stderr)
        print(f"{error.kind}: {error}", file=sys.stderr)
        return 1
    print(f"python: can't open file '{script_file}': [Errno 2] No such file or directory (not in the {profile}"
          " container)", file=sys.stderr)
    return 2


class StandinError(Exception):
    """What NeMo would raise; ``kind`` is the exception class name it would print."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


# --- HF -> .nemo -----------------------------------------------------------------------------------

def _parser(relative: str, args: list[ex.Arg]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(relative).name)
    for arg in args:
        if arg.kind == "store_true":
            parser.add_argument(*arg.flags, action="store_true", dest=arg.dest)
        elif arg.kind == "bool":
            parser.add_argument(*arg.flags, type=bool, default=arg.default, required=arg.required, dest=arg.dest)
        else:
            parser.add_argument(*arg.flags, type=str, default=arg.default, required=arg.required,
                                choices=arg.choices, dest=arg.dest)
    return parser


def convert(profile: str, relative: str, argv: list[str]) -> int:
    try:
        args = _parser(relative, ex.CONVERTERS[profile][relative]).parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    name = re.match(r"convert_(.+)_hf_to_nemo\.py", Path(relative).name).group(1)
    log(f"loading checkpoint {args.input_name_or_path}", where=f"convert_{name}_hf_to_nemo:100")
    hf_config_file = Path(args.input_name_or_path or "") / "config.json"
    if not hf_config_file.is_file():
        raise StandinError("OSError", f"{args.input_name_or_path} does not appear to have a file named config.json")
    hf = json.loads(hf_config_file.read_text())
    capability = gpu_capability()
    if name in ex.NEEDS_CUDA and capability is None:
        raise StandinError("RuntimeError", "Found no NVIDIA driver on your system.")
    precision = args.precision
    if name in ex.FP16_FALLBACK and precision in ("32", "16"):
        precision = int(precision)  # int(float(args.precision)) in the scripts
    elif name in ex.FP16_FALLBACK and precision in ("bf16", "bf16-mixed") and (capability or 0) < 8.0:
        log("BF16 is not supported on this device. Using FP16 instead.", "W", f"convert_{name}_hf_to_nemo:117")
        precision = precision[2:]
    heads = hf["num_attention_heads"]
    config = {
        "precision": precision, "num_layers": hf["num_hidden_layers"], "hidden_size": hf["hidden_size"],
        "ffn_hidden_size": hf.get("intermediate_size"), "num_attention_heads": heads,
        "num_query_groups": hf.get("num_key_value_heads", heads), "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1, "mcore_gpt": True, "stand_in": True,
    }
    if hasattr(args, "llama31"):
        config["scale_positional_embedding"] = bool(args.llama31)
    write_nemo(Path(args.output_path), config)
    log(f"NeMo model saved to: {args.output_path}", where=f"convert_{name}_hf_to_nemo:283")
    return 0


def write_nemo(path: Path, config: dict[str, Any]) -> None:
    """A .nemo is a tar of model_config.yaml and the weights; the stand-in's weights are a note."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in (("model_config.yaml", yaml.safe_dump(config).encode()),
                           ("model_weights.ckpt", b"stand-in: no weights\n")):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def read_nemo_config(path: Path, key: str) -> dict[str, Any]:
    if not path.is_file():
        raise StandinError("FileNotFoundError", f"{key}: {path} does not exist")
    with tarfile.open(path) as archive:
        return yaml.safe_load(archive.extractfile("./model_config.yaml").read())


# --- Hydra scripts ---------------------------------------------------------------------------------

def compose(keys: dict[str, object], argv: list[str]):
    """The script's YAML (as a struct) with the command line applied the way Hydra applies it."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    nested: dict[str, Any] = {}
    for dotted, value in keys.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    cfg = OmegaConf.create(nested)
    OmegaConf.set_struct(cfg, True)
    try:
        ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(argv), cfg)
    except Exception as error:  # Hydra's OverrideParseException / ConfigCompositionException
        raise StandinError(type(error).__name__, str(error)) from None
    return cfg


def require(cfg, *keys: str) -> None:
    from omegaconf import OmegaConf

    for key in keys:
        if OmegaConf.is_missing(OmegaConf.select(cfg, key.rsplit(".", 1)[0]), key.rsplit(".", 1)[1]):
            raise StandinError("omegaconf.errors.MissingMandatoryValue", f"Missing mandatory value: {key}")


def check_world(cfg) -> tuple[int, int]:
    """(world size, data-parallel size) as Lightning and Megatron check them."""
    devices, nodes = int(cfg.trainer.devices), int(cfg.trainer.num_nodes)
    if "TORCHELASTIC_RUN_ID" not in os.environ and "SLURM_NTASKS_PER_NODE" in os.environ:
        tasks = int(os.environ["SLURM_NTASKS_PER_NODE"])
        if tasks != devices:
            raise StandinError("ValueError", f"You set `devices={devices}` in Lightning, but the number of tasks per"
                               f" node configured in SLURM `--ntasks-per-node={tasks}` does not match. HINT: Set"
                               f" `devices={tasks}`.")
    world = devices * nodes
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) != world:
        raise StandinError("RuntimeError", f"WORLD_SIZE {os.environ['WORLD_SIZE']} of the launcher is not"
                           f" trainer.devices x trainer.num_nodes = {world}")
    tp, pp = int(cfg.model.tensor_model_parallel_size), int(cfg.model.pipeline_model_parallel_size)
    if world % (tp * pp):
        raise StandinError("RuntimeError", f"world_size ({world}) is not divisible by tensor_model_parallel_size"
                           f" ({tp}) times pipeline_model_parallel_size ({pp})")
    return world, world // (tp * pp)


def check_batches(global_batch: int, micro: int, data_parallel: int) -> None:
    if global_batch % (micro * data_parallel):
        raise StandinError("AssertionError", f"global batch size ({global_batch}) is not divisible by micro batch"
                           f" size ({micro}) times data parallel size ({data_parallel})")


def check_template(data_cfg) -> str:
    template = data_cfg.prompt_template.encode("utf-8").decode("unicode_escape")
    label = f"{{{data_cfg.label_key}}}"
    if not template.endswith(label):
        raise StandinError("AssertionError", f"{label} must be at the end of prompt_template.")
    keys = re.findall(r"{(.*?)}", template)
    fields = [f.strip() for f in str(data_cfg.truncation_field).split(",")]
    if not set(fields) <= set(keys):
        raise StandinError("AssertionError", f"truncation_fields {fields} must in {keys}")
    return template


def read_records(files, data_cfg) -> list[dict[str, Any]]:
    records = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise StandinError("FileNotFoundError", f"{path} not found")
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # text_memmap_dataset: index files beside the data unless index_mapping_dir is set.
        index_dir = Path(data_cfg.index_mapping_dir) if data_cfg.index_mapping_dir else path.parent
        index_dir.mkdir(parents=True, exist_ok=True)
        for suffix in (".idx.npy", ".idx.info"):
            (index_dir / f"{path.name}{suffix}").write_text("stand-in index\n")
    return records


def oom_if_asked(micro: int, step: int | None = None) -> None:
    """A CUDA OOM above the micro batch limit: at start-up (``step`` None) or at NEMO_STANDIN_OOM_AT_STEP."""
    limit = os.environ.get("NEMO_STANDIN_OOM_ABOVE_MICRO")
    at_step = os.environ.get("NEMO_STANDIN_OOM_AT_STEP")
    if step != (int(at_step) if at_step else None):
        return
    if limit is not None and micro > int(limit):
        print(f"[rank{rank()}]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a"
              " total capacity of 79.10 GiB of which 1.02 GiB is free. Including non-PyTorch memory, this process"
              " has 78.05 GiB memory in use.", file=sys.stderr, flush=True)
        raise SystemExit(1)
