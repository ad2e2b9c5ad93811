"""export_hf.py checked by an independent client: Hugging Face transformers loads the export, applies its chat
template, decodes and generates, and must agree with our code (chat_template.py, model.py, sample.py) token for
token; the derived BPE files must equal GPT-2's published ones.

The "trained" checkpoint is a 2-layer, 32-wide GPT that learns, in a couple of seconds here, to answer a
greeting and close its turn with <|im_end|>: so "generation stops at the end token" is something the model
does, not something the test arranged. It is saved with the keys train_sft.py saves (model, model_args,
config, meta), its meta being what prepare_alpaca.prepare returns.
"""

import json
import logging
import os
import shutil
import warnings

import pytest
import torch
from conftest import ALPACA_5000, SHARED, TINY_MODEL, as_script, needs_alpaca, needs_bpe, save_ckpt
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

import chat_template
import checkpoint
import export_hf
import prepare_alpaca
import sample
from model import GPT, GPTConfig
from records import to_messages

pytestmark = [needs_bpe, pytest.mark.usefixtures("one_thread")]

SYSTEM = 'Be kind. Say "hi"\n{{ not Jinja }} \\ 😀'  # quotes, newline, braces, backslash, emoji: all must survive
ANSWER = "Hello there, friend!"
N_ALPACA = 500  # real records checked per template and case: every 10th of the 5,000


def random_ckpt(path, template, system_prompt, **config) -> str:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**(dict(n_layer=1, n_head=2, n_embd=16, block_size=64) | config)))
    return save_ckpt(path, model, {"template": template, "system_prompt": system_prompt})


class LogRecords(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def load_hf(folder):
    """(model, tokenizer, warnings): transformers' own loaders, with every warning they log or raise collected."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # another test module may have silenced transformers
    handler = LogRecords()
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(folder)
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    problems = [f"{k}: {v}" for k, v in info.items() if v]
    problems += [r.getMessage() for r in handler.records] + [str(w.message) for w in caught]
    return model.eval(), tokenizer, problems


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A tiny SFT checkpoint that answers ANSWER and then <|im_end|>, trained with our model and template."""
    d = tmp_path_factory.mktemp("export")
    records = [{"instruction": f"Say hello number {i}.", "input": "", "output": ANSWER} for i in range(8)]
    (d / "sft.json").write_text(json.dumps(records))
    meta = prepare_alpaca.prepare(inputs=[str(d / "sft.json")], out_dir=str(d / "data"), system_prompt=SYSTEM,
                                  val_size=0)
    examples = [chat_template.encode(to_messages(r, SYSTEM), meta["template"]) for r in records]
    T = max(len(ids) for ids, _ in examples)
    x = torch.full((len(examples), T), meta["end_token"])
    y = torch.full((len(examples), T), -100)
    for row, (ids, mask) in enumerate(examples):
        x[row, : len(ids)] = torch.tensor(ids)
        y[row, : len(ids) - 1] = torch.tensor([t if m else -100 for t, m in zip(ids[1:], mask[1:], strict=True)])
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0, fused=True)
    for _ in range(40):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2, f"the tiny model did not learn its answer (loss {loss.item():.3f})"
    return {"dir": d, "ckpt": save_ckpt(d / "sft" / "ckpt.pt", model, meta), "model": model.eval(), "meta": meta}


@pytest.fixture(scope="module")
def exported(trained):
    out = str(trained["dir"] / "sft_hf")
    export_hf.main([f"--ckpt={trained['dir'] / 'sft'}", f"--out={out}"])  # a folder, as sample.py --ckpt takes
    model, tokenizer, problems = load_hf(out)
    return {"dir": out, "model": model, "tokenizer": tokenizer, "problems": problems}


# ----------------------------------------------------------------------------------------------------------
# The folder loads in transformers, cleanly


def test_transformers_loads_the_export_without_warnings(exported):
    assert exported["problems"] == []
    files = sorted(os.listdir(exported["dir"]))
    assert files == ["config.json", "generation_config.json", "merges.txt", "model.safetensors",
                     "tokenizer_config.json", "vocab.json"]
    with open(os.path.join(exported["dir"], "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "gpt2" and config["vocab_size"] == 50259  # no padding rows
    assert exported["model"].generation_config.eos_token_id == [50258, 50256]  # <|im_end|>, and what sample.py adds
    tokenizer = exported["tokenizer"]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [50256, 50257, 50258]
    assert len(tokenizer) == 50259


def test_the_warning_check_catches_a_missing_weight(exported, tmp_path):
    """The clean load above means something only if a broken export would have been reported."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(exported["dir"], broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["transformer.h.0.ln_1.bias"]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    _, _, problems = load_hf(str(broken))
    assert any("transformer.h.0.ln_1.bias" in p for p in problems)


def test_bpe_files_are_gpt2s(exported):
    """vocab.json and merges.txt, derived from tiktoken's ranks, are byte for byte the files OpenAI published."""
    for ours, theirs in (("vocab.json", "encoder.json"), ("merges.txt", "vocab.bpe")):
        with open(os.path.join(exported["dir"], ours), "rb") as f:
            derived = f.read()
        with open(os.path.join(SHARED, "gpt2", theirs), "rb") as f:
            assert derived == f.read(), f"{ours} differs from GPT-2's {theirs}"


# ----------------------------------------------------------------------------------------------------------
# The same model: logits, round trip, greedy generation


def test_logits_match_ours(trained, exported):
    g = torch.Generator().manual_seed(0)
    for shape in ((2, 64), (1, 7)):  # the full context, and a short one
        idx = torch.randint(0, 50259, shape, generator=g)
        with torch.no_grad():
            ours = trained["model"](idx)[0][..., :50259]
            theirs = exported["model"](idx).logits
        assert theirs.shape == ours.shape
        assert (theirs - ours).abs().max().item() < 1e-4


def test_round_trip_loads_back_exactly(trained, exported):
    back = GPT.from_pretrained(exported["dir"]).eval()
    original = trained["model"].state_dict()
    for name, tensor in back.state_dict().items():
        expected = original[name][:50259] if name in ("transformer.wte.weight", "lm_head.weight") else original[name]
        assert torch.equal(tensor, expected), name
    idx = torch.randint(0, 50259, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back(idx)[0], trained["model"](idx)[0][..., :50259])


def test_greedy_generation_matches_sample_py_and_stops_at_im_end(trained, exported, tmp_path):
    prompts = ["Say hello number 3.", "Say hello number 12.", "What is the capital of France?"]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    sample.main([f"--ckpt={trained['dir'] / 'sft'}", f"--prompts_file={tmp_path / 'prompts.json'}",
                 f"--out={tmp_path / 'out.jsonl'}", "--temperature=0", "--max_new_tokens=20", "--device=cpu",
                 "--dtype=float32"])
    ours = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    tokenizer, model = exported["tokenizer"], exported["model"]
    ends = []
    for prompt, record in zip(prompts, ours, strict=True):
        # No system message: the export's template adds the trained one, as sample.py does.
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_dict=False)
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=20)
        new = out[0, len(ids) :].tolist()
        stopped = new[-1] in (50258, 50256)
        assert stopped == record["stopped"]
        assert tokenizer.decode(new[:-1] if stopped else new) == record["response"]
        assert len(new) - stopped == record["n_tokens"]
        ends.append(new[-1])
    assert ours[0]["response"] == ANSWER and ends[0] == 50258  # learned: the answer, then <|im_end|>


# ----------------------------------------------------------------------------------------------------------
# The chat templates: transformers' apply_chat_template gives chat_template.py's ids, on real data


@pytest.fixture(scope="module", params=[(t, s) for t in chat_template.TEMPLATES for s in (SYSTEM, None)],
                ids=lambda p: f"{p[0]}-{'system' if p[1] else 'nosystem'}")
def template_export(request, tmp_path_factory):
    template, system_prompt = request.param
    d = tmp_path_factory.mktemp("tpl")
    export_hf.export(random_ckpt(d / "ckpt.pt", template, system_prompt), str(d / "hf"))
    return template, system_prompt, AutoTokenizer.from_pretrained(str(d / "hf"))


def apply(tokenizer, messages, **kw):
    return tokenizer.apply_chat_template(messages, return_dict=False, **kw)


@needs_alpaca
def test_chat_template_on_real_alpaca_records(template_export):
    template, system_prompt, tokenizer = template_export
    with open(ALPACA_5000, encoding="utf-8") as f:
        records = json.load(f)
    records = records[:: len(records) // N_ALPACA][:N_ALPACA]
    for r in records:
        messages = to_messages(r, system_prompt)[:-1]  # as in training, without the answer
        expected = chat_template.encode_prompt(messages, template)
        assert apply(tokenizer, messages, add_generation_prompt=True) == expected, r
        assert tokenizer.decode(expected) == chat_template.render(messages, template, add_generation_prompt=True)
        if system_prompt:  # without a system message, the export adds the trained one (as sample.py does)
            assert apply(tokenizer, messages[1:], add_generation_prompt=True) == expected, r


def test_chat_template_multi_turn_and_system_cases(template_export):
    template, system_prompt, tokenizer = template_export
    default = [{"role": "system", "content": system_prompt}] if system_prompt else []
    turns = [{"role": "user", "content": "Hi! Name a colour."}, {"role": "assistant", "content": "Blue."},
             {"role": "user", "content": "Another one,\nplease."}, {"role": "assistant", "content": "Red, I'd say."},
             {"role": "user", "content": "And a number?"}]
    systems = [[], [{"role": "system", "content": "You are a pirate.\nSpeak like one: \"Arr\" {% x %}."}],
               [{"role": "system", "content": "Σύντομα. 短く. 🙂"}]]
    for system in systems:
        for n in (1, 3, 5):  # one question; question, answer, question; two full exchanges and a question
            reference = (system or default) + turns[:n]  # what sample.py would encode
            text = chat_template.render(reference, template, add_generation_prompt=True)
            expected = chat_template.encode_prompt(reference, template)
            assert apply(tokenizer, system + turns[:n], add_generation_prompt=True, tokenize=False) == text
            assert tokenizer.decode(expected) == text
            assert apply(tokenizer, system + turns[:n], add_generation_prompt=True) == expected, (system, n)
        full = system + turns[:4]  # a conversation ending with the assistant: the training text, targets and all
        assert apply(tokenizer, full) == chat_template.encode((system or default) + turns[:4], template)[0]
    with pytest.raises(Exception, match="system message may only come first"):
        apply(tokenizer, turns[:1] + [{"role": "system", "content": "late"}])


# ----------------------------------------------------------------------------------------------------------
# Other checkpoints: a pretraining run (no template), a model without biases


def test_pretrain_checkpoint_and_bias_free_model(tmp_path):
    ckpt = random_ckpt(tmp_path / "pre.pt", "none", None, bias=False)  # a .pt file, as sample.py --ckpt takes
    export_hf.export(ckpt, str(tmp_path / "hf"))
    model, tokenizer, problems = load_hf(str(tmp_path / "hf"))
    assert problems == []
    assert tokenizer.chat_template is None and model.generation_config.eos_token_id == 50256
    ours, _ = checkpoint.load_model(ckpt)
    idx = torch.randint(0, 50259, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(idx).logits - ours(idx)[0][..., :50259]).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------------------------------------
# Bad input, overwriting, atomicity


def run_main(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        as_script(export_hf.main, argv)
    return e.value.code, capsys.readouterr().err


def test_missing_checkpoint_is_one_clear_line_and_writes_nothing(tmp_path, capsys):
    code, err = run_main([f"--ckpt={tmp_path / 'nope'}", f"--out={tmp_path / 'hf'}"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and str(tmp_path / "nope") in err and "ckpt.pt" in err
    assert os.listdir(tmp_path) == []


def test_non_empty_out_needs_force_and_force_replaces(trained, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_main([f"--ckpt={trained['ckpt']}", f"--out={out}"], capsys)
    assert code == 2 and err.count("\n") == 1 and str(out) in err and "--force" in err
    assert os.listdir(out) == ["keep.txt"] and os.listdir(tmp_path) == ["hf"]  # untouched, no temp folder left

    export_hf.main([f"--ckpt={trained['ckpt']}", f"--out={out}", "--force"])
    assert "keep.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert os.listdir(tmp_path) == ["hf"]  # the old folder and the temp folder are gone

    run_dir = os.path.dirname(trained["ckpt"])  # never replace the training run itself, --force or not
    code, err = run_main([f"--ckpt={run_dir}", f"--out={run_dir}", "--force"], capsys)
    assert code == 2 and err.count("\n") == 1 and "holds the checkpoint" in err
    assert os.path.isfile(trained["ckpt"])


def test_a_failed_export_leaves_no_trace_and_the_old_export_intact(trained, tmp_path, monkeypatch):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "old.txt").write_text("previous export")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(export_hf, "write_json", fail)  # fails after model.safetensors is written
        with pytest.raises(OSError, match="disk full"):
            export_hf.export(trained["ckpt"], str(out), force=True)
    assert os.listdir(tmp_path) == ["hf"] and os.listdir(out) == ["old.txt"]
    with monkeypatch.context() as m:
        m.setattr(export_hf.os, "rename", fail)  # fails at the last step, the old export already moved aside
        with pytest.raises(OSError, match="disk full"):
            export_hf.export(trained["ckpt"], str(out), force=True)
    assert os.listdir(tmp_path) == ["hf"] and os.listdir(out) == ["old.txt"]
