"""Packed SFT batches (data.pack, data.packed_batch, model.py's document mask) against independent references:
each example in a packed row must compute exactly what it computes alone in Hugging Face's GPT2LMHeadModel,
and the packed batch must give the loss and gradients of the same examples padded one to a row."""

import dataclasses
import functools
import itertools
import math
import os

import numpy as np
import pytest
import torch
from conftest import make_hf, needs_bpe, run_script

import data
import metrics
from model import GPT, GPTConfig, document_mask

pytestmark = pytest.mark.usefixtures("one_thread")

IGNORE = -100
PAD = 299  # the pad token of these tests (the vocabulary is 300)


def split_of(examples: list[tuple[list[int], list[int]]], row_len: int) -> dict:
    """A split as data.read_examples returns it, from (ids, loss mask) pairs written here."""
    ids = np.array([t for tokens, _ in examples for t in tokens], dtype=np.uint16)
    mask = np.array([m for _, masks in examples for m in masks], dtype=np.uint8)
    offsets = np.cumsum([0] + [len(tokens) for tokens, _ in examples], dtype=np.int64)
    lengths = np.diff(offsets)
    return {"ids": ids, "mask": mask, "offsets": offsets, "lengths": lengths,
            "usable": np.flatnonzero(lengths - 1 <= row_len)}


def random_examples(lengths, seed=0) -> list[tuple[list[int], list[int]]]:
    """Examples of these lengths: random tokens, a prompt of a third of them (mask 0), then the answer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        tokens = torch.randint(0, PAD, (n,), generator=g).tolist()
        out.append((tokens, [0] * (n // 3) + [1] * (n - n // 3)))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """transformers' GPT2LMHeadModel (random weights, a 1024-token context) and our GPT loaded from it."""
    hf = make_hf(seed=3, initializer_range=0.1, n_layer=2, n_head=2, n_embd=32, n_positions=1024, vocab_size=300)
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(str(folder))
    return hf, GPT.from_pretrained(str(folder)).eval()


def where_packed(split: dict, packed: dict, n_rows: int, row_len: int) -> dict:
    """example index -> (row, first column) in the batch of rows 0..n_rows-1, found by walking each row."""
    found = {}
    for r in range(n_rows):
        column = 0
        for e in packed["example_ids"][packed["starts"][r] : packed["starts"][r + 1]]:
            found[int(e)] = (r, column)
            column += int(split["lengths"][e]) - 1
    return found


def test_the_document_mask_by_hand():
    """Positions 0 1 2 | 0 1 | 0: three examples in a row of 6. Query q sees key k iff k <= q, same example."""
    mask = document_mask(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    expected = [[1, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0],
                [0, 0, 0, 1, 0, 0],
                [0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 1]]
    assert mask.shape == (1, 1, 6, 6) and mask[0, 0].int().tolist() == expected


def test_pack_is_best_fit_decreasing():
    """Sizes 5 4 3 3 2 1 1 1 (examples of one token more) into rows of 6, worked out by hand: 5 opens a row
    (1 left), 4 another (2 left), 3 another (3 left); the second 3 fits that row exactly, 2 the row of 4,
    the first 1 the row of 5; the last two 1s open a fourth row. Equal sizes come in a seeded order."""
    sizes = [3, 1, 5, 1, 2, 3, 4, 1]  # example i has sizes[i] + 1 tokens
    split = split_of([([7] * (n + 1), [1] * (n + 1)) for n in sizes], row_len=6)
    packed = data.pack(split, 6, seed=0)
    rows = [packed["example_ids"][a:b].tolist() for a, b in itertools.pairwise(packed["starts"])]
    by_size = [[sizes[e] for e in row] for row in rows]
    assert by_size == [[5, 1], [4, 2], [3, 3], [1, 1]], by_size
    assert rows[0] == [2, rows[0][1]] and rows[1] == [6, 4] and sorted(rows[2]) == [0, 5]
    assert sorted(rows[0][1:] + rows[3]) == [1, 3, 7], "the three 1s: one with the 5, two in a row of their own"
    assert packed["fill"] == pytest.approx(20 / 24)
    assert sorted(packed["example_ids"]) == list(range(8)), "every example once"
    other = data.pack(split, 6, seed=1)
    assert [[sizes[e] for e in other["example_ids"][a:b]] for a, b in itertools.pairwise(other["starts"])] \
        == by_size, "another seed changes the order of equal sizes only"


def test_pack_chooses_the_row_with_the_least_room_that_still_holds_the_example():
    """Sizes 4 3 2 1 into rows of 6: 4 opens a row (2 left), 3 another (3 left). 2 fits both; the row of 4
    is the tighter fit and is filled. 1 then goes to the row of 3 (worst-fit would give [[4, 1], [3, 2]])."""
    sizes = [2, 4, 1, 3]
    split = split_of([([7] * (n + 1), [1] * (n + 1)) for n in sizes], row_len=6)
    packed = data.pack(split, 6, seed=0)
    rows = [[sizes[e] for e in packed["example_ids"][a:b]] for a, b in itertools.pairwise(packed["starts"])]
    assert rows == [[4, 2], [3, 1]], rows


def test_a_packed_row_gives_every_example_its_logits_alone_in_transformers(models):
    hf, ours = models
    examples = random_examples([7, 30, 3, 61, 17, 12, 40])
    split = split_of(examples, row_len=64)
    packed = data.pack(split, 64, seed=0)
    n_rows = len(packed["starts"]) - 1
    X, Y, P = (torch.from_numpy(a) for a in data.packed_batch(split, packed, np.arange(n_rows), 64, PAD))
    assert n_rows < len(examples), "several examples share a row"
    with torch.no_grad():
        logits = ours(X, positions=P)[0]
        for e, (r, c) in where_packed(split, packed, n_rows, 64).items():
            tokens = examples[e][0]
            alone = hf(torch.tensor([tokens[:-1]])).logits[0]
            assert (logits[r, c : c + len(tokens) - 1] - alone).abs().max().item() <= 1e-5, e


def test_packed_loss_and_gradients_equal_the_examples_padded_one_to_a_row(models):
    """The same examples, packed (data.packed_batch) or each alone in its own padded row (built here): the
    same summed loss and the same gradient of every weight."""
    _, model = models
    examples = random_examples([9, 25, 4, 50, 13, 33], seed=1)
    split = split_of(examples, row_len=64)
    packed = data.pack(split, 64, seed=0)
    X, Y, P = (torch.from_numpy(a) for a in data.packed_batch(split, packed, np.arange(len(packed["starts"]) - 1),
                                                               64, PAD))
    width = max(len(t) for t, _ in examples) - 1
    Xu = torch.full((len(examples), width), PAD)
    Yu = torch.full((len(examples), width), IGNORE)
    for i, (tokens, masks) in enumerate(examples):
        Xu[i, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        Yu[i, : len(tokens) - 1] = torch.tensor([t if m else IGNORE
                                                 for t, m in zip(tokens[1:], masks[1:], strict=True)])
    assert int((Y != IGNORE).sum()) == int((Yu != IGNORE).sum()) > 0

    def summed_loss_and_grads(*batch):
        model.zero_grad(set_to_none=True)
        _, loss = model(*batch)
        total = loss * (batch[1] != IGNORE).sum()
        total.backward()
        return total.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_packed, grads_packed = summed_loss_and_grads(X, Y, P)
    loss_alone, grads_alone = summed_loss_and_grads(Xu, Yu)
    assert loss_packed == pytest.approx(loss_alone, rel=1e-6)
    for name, g in grads_alone.items():
        assert (grads_packed[name] - g).norm() <= 1e-5 * g.norm() + 1e-8, name


def test_no_example_sees_another(models):
    """Changing every token of one example leaves the logits of the others in its row exactly as they were."""
    _, model = models
    examples = random_examples([20, 20, 20], seed=2)
    split = split_of(examples, row_len=64)
    packed = data.pack(split, 64, seed=0)
    assert len(packed["starts"]) == 2, "all three in one row"
    batch = [torch.from_numpy(a) for a in data.packed_batch(split, packed, np.arange(1), 64, PAD)]
    where = where_packed(split, packed, 1, 64)
    changed = [list(e) for e in examples]
    changed[1] = ([(t + 1) % PAD for t in examples[1][0]], examples[1][1])
    split2 = split_of([tuple(e) for e in changed], row_len=64)
    batch2 = [torch.from_numpy(a) for a in data.packed_batch(split2, packed, np.arange(1), 64, PAD)]
    with torch.no_grad():
        before, after = model(batch[0], positions=batch[2])[0], model(batch2[0], positions=batch2[2])[0]
    for e in (0, 2):
        _, c = where[e]
        assert torch.equal(before[0, c : c + 19], after[0, c : c + 19]), e
    _, c = where[1]
    assert not torch.allclose(before[0, c : c + 19], after[0, c : c + 19]), "the changed example did change"


def test_an_example_at_offset_500_has_its_logits_at_offset_0(models):
    """Positions restart: after a 500-position example, the next one computes what it computes alone."""
    _, model = models
    long, short = random_examples([501, 40], seed=3)
    split = split_of([long, short], row_len=1024)
    packed = {"example_ids": np.array([0, 1]), "starts": np.array([0, 2])}  # this order: the short one at 500
    X, Y, P = (torch.from_numpy(a) for a in data.packed_batch(split, packed, np.arange(1), 1024, PAD))
    assert P[0, 500].item() == 0 and X[0, 500].item() == short[0][0]
    with torch.no_grad():
        at_500 = model(X, positions=P)[0][0, 500:539]
        at_0 = model(torch.tensor([short[0][:-1]]))[0][0]
    assert (at_500 - at_0).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------------------------------------
# torch.compile: one shape, no graph break, the losses of eager


def losses_of(out_dir) -> dict:
    import json

    with open(f"{out_dir}/metrics.jsonl") as f:
        return {r["iter"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_a_compiled_run_has_no_graph_break_two_graphs_and_the_losses_of_eager(sft_data, tmp_path, monkeypatch):
    """train_sft.py with compile=True, 20 steps with evaluations every 5: dynamo's own counters must show no
    graph break and two graphs (training, and evaluation under no_grad: one recompile), and the step losses
    must be eager's. Dynamo traces the same whatever backend compiles the graphs, so this fast check uses
    aot_eager (the backward graphs traced too, no code generated); the slow suite runs inductor itself."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    counters = torch._dynamo.utils.counters
    counters.clear()
    args = [f"--data_dir={sft_data}", "--max_iters=20", "--eval_interval=5", "--dropout=0.0"]
    run_script("train_sft.py", *args, f"--out_dir={tmp_path / 'compiled'}", "--compile=True")
    graphs, breaks = counters["stats"]["unique_graphs"], dict(counters["graph_break"])
    torch._dynamo.reset()
    run_script("train_sft.py", *args, f"--out_dir={tmp_path / 'eager'}")
    assert breaks == {}, breaks
    assert graphs == 2, f"{graphs} graphs: one for training, one for evaluation, no more"
    compiled, eager = losses_of(tmp_path / "compiled"), losses_of(tmp_path / "eager")
    assert sorted(compiled) == sorted(eager) == list(range(1, 21))
    for step, loss in eager.items():
        assert math.isclose(compiled[step], loss, rel_tol=1e-5), (step, compiled[step], loss)


@pytest.mark.slow
@needs_bpe
def test_an_inductor_compiled_run_matches_eager(sft_data, tmp_path):
    """The same with the default backend (inductor: generated C++ on a CPU), as a user's run compiles."""
    import subprocess
    import sys

    from conftest import ROOT, TINY_RUN

    args = [*TINY_RUN, f"--data_dir={sft_data}", "--max_iters=20", "--eval_interval=5"]
    outs = []
    for name, extra in (("compiled", ["--compile=True"]), ("eager", [])):
        proc = subprocess.run([sys.executable, "train_sft.py", *args, f"--out_dir={tmp_path / name}", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(proc.stdout)
    assert "torch.compile: 2 graphs, 0 graph breaks" in outs[0], outs[0][-2000:]
    compiled, eager = losses_of(tmp_path / "compiled"), losses_of(tmp_path / "eager")
    for step, loss in eager.items():
        assert math.isclose(compiled[step], loss, rel_tol=1e-4), (step, compiled[step], loss)


# --------------------------------------------------------------------------------------------------------
# attention="flex": the same document mask as a FlexAttention BlockMask. A CPU checks what it can: the mask
# (the compiled graph's FlexAttention, run by its reference implementation, against the boolean-mask SDPA) and
# the graph (FlexAttention is in it). Only a GPU has FlexAttention's backward and its fused kernel's speed.


def worst_case_rows(row_len: int = 1024) -> list[torch.Tensor]:
    """(X, Y, P) of three rows of row_len positions that stress the mask: row_len two-token examples (one
    position each: every query sees only itself); one example of the full length; examples that end in
    padding (padding restarts its positions: an example of its own)."""
    rows = [[2] * row_len, [row_len + 1], [row_len // 3, row_len // 4, row_len // 8, 2]]  # examples' lengths
    examples = random_examples([n for r in rows for n in r], seed=5)
    split = split_of(examples, row_len)
    starts = np.cumsum([0] + [len(r) for r in rows])
    packed = {"example_ids": np.arange(len(examples)), "starts": starts}  # these rows, as written
    batch = [torch.from_numpy(a) for a in data.packed_batch(split, packed, np.arange(3), row_len, PAD)]
    assert batch[2][0].eq(0).all() and batch[2][1].equal(torch.arange(row_len)) and batch[2][2, -1] > 0
    return batch


def with_attention(model: GPT, attention: str) -> GPT:
    """The same weights, computing attention the other way."""
    other = GPT(dataclasses.replace(model.config, attention=attention))
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


def compiled_keeping_graphs(model, graphs: list, compile=torch.compile):
    """torch.compile(model) with a backend that keeps dynamo's graphs and runs them as they are (the ops' own
    implementations: FlexAttention's is its reference, which applies the mask to every score)."""

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    return compile(model, backend=backend)


def ran_flex_attention(graphs) -> bool:
    return any(node.target is torch.ops.higher_order.flex_attention for g in graphs for node in g.graph.nodes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_flex_attention_mask_matches_the_boolean_mask_on_the_worst_rows(models, dtype):
    """The compiled model with attention="flex" on the worst-case rows: the same logits as SDPA with the
    boolean mask, and FlexAttention is what the graph runs."""
    _, model = models
    X, _, P = worst_case_rows()
    sdpa, flex = (with_attention(model, a).to(dtype) for a in ("sdpa", "flex"))
    graphs = []
    with torch.no_grad():
        want = sdpa(X, positions=P)[0].float()
        got = compiled_keeping_graphs(flex, graphs)(X, positions=P)[0].float()
    assert ran_flex_attention(graphs), "the compiled graph holds no FlexAttention"
    tol = 1e-5 if dtype == torch.float32 else 5e-2 * want.abs().max().item()
    assert (got - want).abs().max().item() <= tol


def test_an_ignored_attention_setting_is_seen(models):
    """Teeth: with attention="sdpa" the compiled graph holds no FlexAttention, so the check above can fail."""
    _, model = models
    X, _, P = worst_case_rows(64)
    graphs = []
    with torch.no_grad():
        compiled_keeping_graphs(with_attention(model, "sdpa"), graphs)(X, positions=P)
    assert graphs and not ran_flex_attention(graphs)


@needs_bpe
def test_a_compiled_evaluation_with_flex_equals_the_sdpa_one(sft_data, tmp_path, monkeypatch, capsys):
    """train_sft.py --eval_only with compile=True: attention=flex (allowed on a CPU only to evaluate: it has no
    backward there) gives the val loss of attention=sdpa. The compile keeps its graphs (see above)."""
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={tmp_path / 'base'}", "--max_iters=2")
    graphs = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled_keeping_graphs(model, graphs))
    records, write = [], metrics.MetricsLog.write  # what the run logs, at full precision (and writes: nothing)
    monkeypatch.setattr(metrics.MetricsLog, "write", lambda self, record: (records.append(record), write(self, record)))
    curve = (tmp_path / "base" / "metrics.jsonl").read_text()
    losses = {}
    for attention in ("sdpa", "flex"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:  # (an evaluation-only run ends with sys.exit(0))
            run_script("train_sft.py", f"--data_dir={sft_data}", f"--init_from={tmp_path / 'base'}",
                       f"--out_dir={tmp_path / 'base'}", "--eval_only=True", "--compile=True",
                       f"--attention={attention}")
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert "attention flex" in out if attention == "flex" else "attention sdpa" in out
        losses[attention] = [r["val_loss"] for r in records if "val_loss" in r]
        records.clear()
        assert ran_flex_attention(graphs) == (attention == "flex"), attention
    assert len(losses["sdpa"]) == 1 and losses["flex"] == pytest.approx(losses["sdpa"], rel=1e-6)
    assert sorted(os.listdir(tmp_path / "base")) == ["best.pt", "ckpt.pt", "metrics.jsonl"], "evaluating wrote"
    assert (tmp_path / "base" / "metrics.jsonl").read_text() == curve, "evaluating added to the run's curve"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inductor_compiles_flex_attention_on_a_cpu_to_the_boolean_masks_logits(models, dtype):
    """The same with inductor, as a run compiles: on a CPU, FlexAttention's fused C++ kernel (a minute of
    compiling, hence the slow suite)."""
    _, model = models
    X, _, P = worst_case_rows()
    sdpa, flex = (with_attention(model, a).eval().to(dtype) for a in ("sdpa", "flex"))
    torch._dynamo.reset()
    with torch.no_grad():
        want, got = sdpa(X, positions=P)[0].float(), torch.compile(flex)(X, positions=P)[0].float()
    tol = 1e-5 if dtype == torch.float32 else 5e-2 * want.abs().max().item()
    assert (got - want).abs().max().item() <= tol


# --------------------------------------------------------------------------------------------------------
# On a GPU (skipped elsewhere, never reported as passed): FlexAttention forward and backward at the main job's
# shape, and the compiled main-job step against eager


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("recompute", [False, True], ids=["", "gradient_checkpointing"])
def test_flex_attention_on_a_gpu_matches_sdpa_forward_and_backward(recompute):
    """bf16, 12 rows of 1,024 (the worst-case rows among them), 12 heads of 64, weights large enough that
    attention decides the logits: the compiled model's logits and every gradient with FlexAttention against
    SDPA's boolean mask eagerly, and FlexAttention is what ran; with gradient checkpointing too (the XL recipe's
    way), where the backward pass runs each block, and its FlexAttention, again."""
    torch.manual_seed(6)
    config = GPTConfig(block_size=1024, vocab_size=PAD + 1, n_layer=2, n_head=12, n_embd=768)
    model = GPT(config).cuda()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)  # decisive: a mask that let one token through would move the logits
    rows = worst_case_rows()
    examples = random_examples(list(range(30, 600, 13)), seed=7)
    split = split_of(examples, row_len=1024)
    packed = data.pack(split, 1024, seed=0)
    more = data.packed_batch(split, packed, np.arange(9) % (len(packed["starts"]) - 1), 1024, PAD)
    X, Y, P = (torch.cat([r, torch.from_numpy(m)]).cuda() for r, m in zip(rows, more, strict=True))
    assert X.shape == (12, 1024)

    def logits_and_grads(m, run):
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = run(X, P)
            loss = torch.nn.functional.cross_entropy(m.lm_head(h).float().flatten(0, 1), Y.flatten(),
                                                     ignore_index=IGNORE)
        loss.backward()
        return m.lm_head(h).float().detach(), {n: p.grad.float().clone() for n, p in m.named_parameters()}

    want, grads_ref = logits_and_grads(model, lambda x, p: model.hidden(x, positions=p))
    flex = GPT(dataclasses.replace(config, attention="flex", gradient_checkpointing=recompute)).cuda().train()
    flex.load_state_dict(model.state_dict())
    graphs = []
    compiled = torch.compile(flex.hidden, backend=keeping_inductor(graphs))
    got, grads = logits_and_grads(flex, lambda x, p: compiled(x, positions=p))
    assert ran_flex_attention(graphs)
    assert (got - want).abs().max().item() <= 3e-2 * want.abs().max().item()
    for name, g in grads_ref.items():
        assert (grads[name] - g).norm() <= 3e-2 * g.norm() + 1e-6, name


def keeping_inductor(graphs):
    """inductor, keeping dynamo's graphs to look into."""
    from torch._inductor.compile_fx import compile_fx

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return compile_fx(graph_module, example_inputs)

    torch._dynamo.reset()
    return backend


@needs_cuda
@needs_bpe
def test_the_compiled_main_job_step_matches_eager_on_a_gpu(sft_data, tmp_path):
    """train_sft.py as the main job runs it on a GPU (compile, attention and loss on auto: flex and fused, bf16)
    against eager (sdpa, chunked), on the same batches from a model trained first (its loss far from ln V's,
    so the mask and the loss decide it): the same step losses, and the same weights after 6 steps."""
    import subprocess
    import sys

    from conftest import ROOT, TINY_RUN

    tiny = [a for a in TINY_RUN if not a.startswith(("--device", "--dtype"))] + ["--device=cuda"]
    base = [*tiny, f"--data_dir={sft_data}", "--eval_interval=1000"]
    outputs = {}
    for name, extra in (("base", ["--max_iters=40", "--learning_rate=3e-3"]),
                        ("compiled", ["--max_iters=6", "--compile=True", f"--init_from={tmp_path / 'base'}"]),
                        ("eager", ["--max_iters=6", f"--init_from={tmp_path / 'base'}"])):
        proc = subprocess.run([sys.executable, "train_sft.py", *base, f"--out_dir={tmp_path / name}", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = proc.stdout
    assert "attention flex" in outputs["compiled"] and "loss fused" in outputs["compiled"], outputs["compiled"]
    assert "attention sdpa" in outputs["eager"] and "loss chunked" in outputs["eager"], outputs["eager"]
    compiled, eager = losses_of(tmp_path / "compiled"), losses_of(tmp_path / "eager")
    assert eager[1] < 0.8 * math.log(50304), "the base model learned something"
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=5e-3), step
    import checkpoint

    weights = [checkpoint.load_checkpoint(str(tmp_path / n / "ckpt.pt"))["model"] for n in ("compiled", "eager")]
    for name, w in weights[1].items():
        assert (weights[0][name].float() - w.float()).norm() <= 1e-2 * w.float().norm() + 1e-6, name
