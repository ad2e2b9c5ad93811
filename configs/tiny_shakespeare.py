# Pretrain a small GPT from scratch on Tiny Shakespeare, on a laptop CPU in minutes (the no-GPU path, step 1).
#   python train_pretrain.py configs/tiny_shakespeare.py
# Then SFT it on Alpaca: python train_sft.py configs/tiny_alpaca.py
# 4 layers x 128 wide, 256-token context, GPT-2's tokenizer (its 50304-row embedding is 6.4M of the 7.2M
# parameters). Measured on a 2-core CPU: see README.md "The no-GPU path" for time and loss.
out_dir = "out/shakespeare"
init_from = "scratch"
data_dir = "data/shakespeare"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
dropout = 0.0
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 500
eval_interval = 100
eval_iters = 10
learning_rate = 2e-3  # small models take a high learning rate
min_lr = 2e-4
warmup_iters = 50
weight_decay = 0.1
beta2 = 0.99  # few tokens per step: a longer second-moment average is steadier
