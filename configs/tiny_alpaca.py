# SFT of the tiny Shakespeare model on Alpaca, on a laptop CPU in minutes (the no-GPU path, step 2).
#   python train_pretrain.py configs/tiny_shakespeare.py    # first, makes out/shakespeare/ckpt.pt
#   python train_sft.py configs/tiny_alpaca.py
# Alpaca is downloaded and prepared into data/alpaca on first use (offline: see README.md, "The no-GPU path").
# The tiny model cannot learn much world knowledge; what it does learn is the format: answer after the
# assistant header, and end the answer with <|im_end|>. That is exactly what SFT is for.
out_dir = "out/tiny_alpaca"
init_from = "out/shakespeare"  # our own pretrained checkpoint
data_dir = "data/alpaca"
batch_size = 6  # rows of 256 positions (the base model's context), ~19 examples a step
gradient_accumulation_steps = 1
max_iters = 600
eval_interval = 200
eval_iters = 10
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 50
weight_decay = 0.1
beta2 = 0.99
