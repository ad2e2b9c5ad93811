# Instruction-tune GPT-2 124M on the full Stanford Alpaca set (52K records) in ChatML. Made for one GPU.
#   python train_sft.py configs/gpt2_alpaca.py
#   torchrun --standalone --nproc_per_node=8 train_sft.py configs/gpt2_alpaca.py --gradient_accumulation_steps=1
# Recipe: Stanford Alpaca's (3 epochs, cosine schedule, 3% warmup, no weight decay, global batch 128) with
# the learning rate raised from their 2e-5 (for 7B parameters) to 5e-5, the value used for GPT-2 124M in
# "Build a Large Language Model (From Scratch)", ch. 7; smaller models want larger learning rates.
# 3 epochs of ~49.4K training examples at 128 per step = 1,158 steps, ~13.1M token positions (4.4M per
# epoch, 67% of them targets). Not yet measured on a GPU (see BENCHMARKS.md); estimates: the FLOPs
# (6 x 124M x 13.1M = 1e16) are under a minute of an H100, but micro-batches of 16 short examples leave a
# GPU mostly waiting on kernel launches, so expect ~5-10 minutes with dtype='auto' (bf16) and compile=True.
# Memory: the loss computes the logits a chunk at a time (model.LOSS_CHUNK), so activations and AdamW's state
# set the peak, not the 50304-wide output layer; not yet measured on a GPU.
# For a better model: --init_from=gpt2-medium (355M) --batch_size=8 --gradient_accumulation_steps=16.
out_dir = "out/gpt2_alpaca"
init_from = "gpt2"
data_dir = "data/alpaca"
batch_size = 16
gradient_accumulation_steps = 8  # 16 x 8 = 128 examples per step on one GPU
max_iters = 1158
eval_interval = 100
eval_iters = 40
learning_rate = 5e-5
min_lr = 5e-6
warmup_iters = 35  # 3% of the steps
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0
dropout = 0.0
compile = True
