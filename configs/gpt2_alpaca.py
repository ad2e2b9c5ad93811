# Instruction-tune GPT-2 124M on the full Stanford Alpaca set (52K records) in ChatML. Made for one GPU.
#   python train_sft.py configs/gpt2_alpaca.py
#   torchrun --standalone --nproc_per_node=4 train_sft.py configs/gpt2_alpaca.py --batch_size=3
# Recipe: Stanford Alpaca's (3 epochs, cosine schedule, 3% warmup, no weight decay, ~128 examples per step)
# with the learning rate raised from their 2e-5 (for 7B parameters) to 5e-5, the value used for GPT-2 124M
# in "Build a Large Language Model (From Scratch)", ch. 7; smaller models want larger learning rates.
# A step is one micro-batch of 12 rows of 1,024 token positions, the examples packed in whole (data.pack):
# ~141 Alpaca examples, ~8,400 target tokens, about Alpaca's 128 examples. 3 epochs of the ~49.4K
# training examples (4.3M positions, ~4,190 rows an epoch) are ~1,050 steps; the run prints the exact
# count for the data it finds (on the 5,000-record sample, 33 steps make an epoch).
# Checkpoints: a resumable ckpt.pt about once an epoch and at the end (a 124M checkpoint with AdamW's state
# is ~1.5 GB; at every evaluation they would be a good part of a 2-minute run), and on Ctrl-C or SIGTERM
# the step reached; an interrupted run loses at most the steps since the last one (none when stopped by a
# signal). best.pt (the model alone) follows the best val loss.
# Speed and memory on one GPU: `python bench/bench.py --only h` measures them (BENCHMARKS.md, "GPU").
# For a better model: --init_from=gpt2-medium (355M), and if memory runs out --batch_size=6
# --gradient_accumulation_steps=2 (the same 12 rows a step).
out_dir = "out/gpt2_alpaca"
init_from = "gpt2"
data_dir = "data/alpaca"
batch_size = 12  # rows of 1,024 positions
gradient_accumulation_steps = 1  # 12 rows (~141 examples) per step on one GPU
max_iters = 1050
eval_interval = 100
checkpoint_interval = 350  # ~an epoch of the 52K records
eval_iters = 20
learning_rate = 5e-5
min_lr = 5e-6
warmup_iters = 32  # 3% of the steps
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0
dropout = 0.0
compile = True
