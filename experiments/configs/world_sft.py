# SFT of the world's base model on questions about the SFT entities (experiments/knowledge.py runs this with
# --init_from/--data_dir/--out_dir overrides).
#   python prepare_alpaca.py --input data/world/sft_qa.json --out_dir data/world/sft --val_size 16
#   python train_sft.py experiments/configs/world_sft.py
# The answers are single sentences in a pretraining phrasing, the subject a pronoun ("Its capital is Paris."):
# SFT teaches the format (answer after the assistant header, one sentence, then <|im_end|>) and to look the
# asked-about entity's fact up, which takes a few hundred examples (experiments/README.md, data-size curve).
# Three epochs, not more: longer SFT polishes the sentence, and by 240 steps looks up fewer of the facts it
# never trained on (chosen on seeds that no reported figure uses; experiments/README.md, "How the recipe was chosen").
out_dir = "out/knowledge/sft"
init_from = "out/knowledge/base"
data_dir = "data/world/sft"
batch_size = 8  # rows of 64 positions, two questions each: 16 questions a step
gradient_accumulation_steps = 1
max_iters = 60
eval_interval = 1000
eval_iters = 1
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 5
weight_decay = 0.1
beta2 = 0.99
