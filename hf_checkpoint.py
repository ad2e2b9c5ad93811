"""
GPT-2 checkpoints in Hugging Face's layout: find them (a local folder, or the hub through download.py), read
their config.json and weights, and copy the weights into our GPT. model.py's `GPT.from_pretrained` is the
one caller; the layout facts (names, the Conv1D transpose) live here so that the model file stays the model.

A folder in this layout holds config.json and model.safetensors (or the older pytorch_model.bin).
"""

import glob
import json
import os
import re

import torch

from download import DownloadError, download
from errors import UserError

HF_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}

# Hugging Face's GPT-2 uses Conv1D layers, whose weight is stored (in, out); nn.Linear stores (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def cache_root() -> str:
    return os.environ.get("NANOSFT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nanosft"))


def looks_local(name: str) -> bool:
    """A path on this machine, never a hub id, decided before any request: it exists, starts like a path (out/,
    data/, ., /, ~), or has two or more '/'. Only GPT-2's names and 'org/name' ids go to the hub: a folder the
    project writes itself (out/shakespeare before its pretraining) must never turn into a download."""
    if os.path.exists(name) or name.startswith(("out/", "data/", ".", "/", "~")) or name.count("/") > 1:
        return True
    return os.sep != "/" and os.sep in name  # a Windows path


def what_makes(folder: str) -> str:
    """How a missing model folder comes to exist: the shipped config whose out_dir it is, else any run."""
    configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    for path in sorted(glob.glob(os.path.join(configs, "*.py"))):
        with open(path) as f:
            text = f.read()
        if re.search(rf'^out_dir = "{re.escape(os.path.normpath(folder))}"', text, re.M):
            command = re.search(rf"python train_\w+\.py (\S+ )*configs/{os.path.basename(path)}", text)
            if command:
                return f"run `{command.group(0)}` first"
    return "train a model into it first (--out_dir), or give the folder of one"


def find(name: str, cache_dir: str | None = None) -> str:
    """The local folder of a checkpoint in Hugging Face's layout: name itself, or the hub's copy, downloaded."""
    if not looks_local(name):
        return fetch(name, cache_dir)
    if os.path.isfile(os.path.join(name, "config.json")):
        return name
    if os.path.isdir(name):
        raise UserError(f"{name} is a folder without config.json: a model folder holds our ckpt.pt, or Hugging "
                        f"Face's config.json and model.safetensors")
    raise UserError(f"{name} does not exist: {what_makes(name)}")


def fetch(name: str, cache_dir: str | None = None) -> str:
    """Download config.json and the weights of a hub repo (once) and return the local folder."""
    repo = HF_NAMES.get(name, name)
    if repo.count("/") != 1:
        raise UserError(f"{name!r} is neither a local folder nor a hub repo: use one of {sorted(HF_NAMES)}, "
                        f"'org/name', or a folder holding config.json and model.safetensors")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    root = cache_dir or cache_root()
    folder = os.path.join(root, repo)
    # On failure, remove the empty folders this call made: up to the cache root, and the root too if it is new.
    made_from = root if os.path.isdir(root) else os.path.dirname(os.path.abspath(root))

    def get(filename):
        return download(f"{endpoint}/{repo}/resolve/main/{filename}", os.path.join(folder, filename),
                        desc=f"{repo}/{filename}")

    offline = (f"Offline, place both files of {endpoint}/{repo} yourself: config.json and model.safetensors, "
               f"in {folder}")
    try:
        get("config.json")
    except DownloadError as e:
        _remove_empty_folders(folder, stop=made_from)  # a failed name leaves nothing behind
        raise DownloadError(f"{name!r} is not a local folder (with config.json, or our ckpt.pt) and the hub did "
                            f"not serve it: {e}. {offline}") from None
    if not os.path.exists(os.path.join(folder, "pytorch_model.bin")):
        try:
            try:
                get("model.safetensors")
            except DownloadError as e:
                if e.status != 404:
                    raise
                get("pytorch_model.bin")  # older repos publish only the pickle; read with weights_only=True
        except DownloadError as e:
            raise DownloadError(f"{e}. {offline}") from None
    return folder


def read_config(folder: str) -> dict:
    """config.json as GPTConfig's arguments (vocab_size is the checkpoint's). Refuses GPT-2 variants that our
    model would compute differently, rather than guessing."""
    with open(os.path.join(folder, "config.json")) as f:
        hf = json.load(f)
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"{folder}: model_type is {hf.get('model_type')!r}; only GPT-2 checkpoints load")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"{folder}: activation_function {hf['activation_function']!r} is not GPT-2's")
    unsupported = {k: hf[k] for k, ok in (("scale_attn_by_inverse_layer_idx", False),
                                          ("reorder_and_upcast_attn", False), ("scale_attn_weights", True))
                   if k in hf and hf[k] != ok}
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        unsupported["n_inner"] = hf["n_inner"]
    if unsupported:
        raise UserError(f"{folder}: unsupported GPT-2 options {unsupported}")
    return dict(block_size=hf.get("n_positions", hf.get("n_ctx", 1024)), vocab_size=hf["vocab_size"],
                n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True,
                layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5))


def read_state_dict(folder: str) -> dict:
    path = os.path.join(folder, "model.safetensors")
    if os.path.exists(path):
        from safetensors.torch import load_file

        return load_file(path)
    path = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True)  # never run pickled code from a download
    raise UserError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def load_weights(model: torch.nn.Module, hf_state: dict, ckpt_vocab: int, source: str) -> None:
    """Copy a Hugging Face GPT-2 state dict into our GPT, naming every key that does not fit.

    An embedding of the model larger than the checkpoint's keeps the pretrained rows and starts the new rows
    at their mean: a neutral token, neither random noise nor a copy of a real one.
    """
    ours = model.state_dict()
    loaded, unexpected, misshaped = set(), [], []
    for key, tensor in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers, not weights: SDPA's is_causal does their job
        if key == "lm_head.weight":
            continue  # tied to wte, which is loaded under its own name
        name = key if key.startswith("transformer.") else "transformer." + key  # some repos drop the prefix
        if name not in ours:
            unexpected.append(key)
            continue
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        target = ours[name]
        if (name == "transformer.wte.weight" and target.shape[0] > tensor.shape[0] == ckpt_vocab
                and tensor.shape[1:] == target.shape[1:]):
            with torch.no_grad():
                target[:ckpt_vocab].copy_(tensor)
                target[ckpt_vocab:].copy_(tensor.float().mean(dim=0).to(target.dtype))
            loaded.add(name)
            continue
        if tensor.shape != target.shape:
            misshaped.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)}")
            continue
        with torch.no_grad():
            target.copy_(tensor)
        loaded.add(name)
    missing = [k for k in ours if k not in loaded and k != "lm_head.weight"]
    if missing or unexpected or misshaped:
        problems = ([f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected]
                    + [f"wrong shape: {k}" for k in misshaped])
        raise UserError(f"cannot load {source} into GPT: {'; '.join(problems)}")


def _remove_empty_folders(folder: str, stop: str) -> None:
    stop = os.path.abspath(stop)
    folder = os.path.abspath(folder)
    while folder.startswith(stop + os.sep) and os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)
        folder = os.path.dirname(folder)
