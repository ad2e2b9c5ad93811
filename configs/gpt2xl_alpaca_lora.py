# GPT-2 XL (1.5B) with LoRA, on one GPU: a layer on top of gpt2_alpaca.py, which keeps the Alpaca recipe (3
# epochs, 12 packed rows per step, cosine schedule, 3% warmup, data, evaluation); give both, in this order:
#   python train_sft.py configs/gpt2_alpaca.py configs/gpt2xl_alpaca_lora.py
#   python sample.py --ckpt=out/gpt2xl_alpaca_lora --compare     # the LoRA checkpoint loads merged
# Full fine-tuning keeps weights, gradients and two AdamW moments for all 1.56B parameters: 23 GiB in fp32
# before activations. LoRA at rank 8 trains 9.9M weights (0.63% of all): the frozen weights (5.8 GiB in fp32) plus
# 0.15 GiB of adapter state (bench/bench.py --only e; BENCHMARKS.md). On top: the bf16 copies of the weights
# that autocast keeps for the backward pass (up to 2.9 GiB), a few transient copies of the embedding matrix
# (0.3 GiB each: the chat tokens' rows train), and activations, which grow with batch_size (rows of 1,024):
# lower batch_size (and raise gradient_accumulation_steps to keep 12 rows per step) if memory runs out.
# Not yet run on a GPU.
# What changes from gpt2_alpaca.py: the model, LoRA, a smaller micro-batch (the same 12 rows per step),
# and LoRA's usual learning rate, 2e-4 (Hu et al. fine-tuned GPT-2 M and L at that rate): the adapters start
# at zero and are few, so they take larger steps than a full fine-tuning's 5e-5 (or the 2e-5 Alpaca used at 7B).
out_dir = "out/gpt2xl_alpaca_lora"
init_from = "gpt2-xl"
lora_rank = 8
lora_alpha = 16.0
lora_targets = "c_attn,c_proj,c_fc"  # every Linear of every block: attention and MLP
batch_size = 3
gradient_accumulation_steps = 4  # 3 x 4 = 12 rows (~141 examples) per step on one GPU
learning_rate = 2e-4
min_lr = 2e-5
