"""
How model.cross_entropy runs eagerly (loss_path="chunked"): the summed cross-entropy of
(h @ weight.T, targets), a chunk of rows at a time, so that the logits of a whole batch (rows x
vocab_size, a small model's largest tensor by far) never exist at once. The gradient is worked out
in the same pass, while each chunk's logits are at hand (softmax - one_hot), so nothing is
recomputed in the backward pass: the fused linear-cross-entropy of Liger-Kernel and torchtune.
"""

import torch
import torch.nn.functional as F

LOSS_CHUNK = 2**27  # logits held at once, at most: 512 MB in fp32 (whole rows of vocab)
LOSS_ROWS_MULTIPLE = 256  # in bf16 on a CPU, the matmuls see rows in multiples of this


def chunked_cross_entropy_sum(h: torch.Tensor, weight: torch.Tensor,
                              targets: torch.Tensor) -> torch.Tensor:
    """The sum over rows of cross_entropy(h @ weight.T, targets), for rows h (N, n_embd) that all
    have a target. Under no_grad (evaluation) only the loss is computed: no gradient matmuls."""
    return _ChunkedCrossEntropy.apply(h, weight, targets, torch.is_grad_enabled())


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, grad_enabled):
        # Without autocast and in fp32 the gradients can be written in place (mm out=, addmm_): no
        # temporaries.
        plain_fp32 = (not torch.is_autocast_enabled(h.device.type)
                      and h.dtype == weight.dtype == torch.float32)
        # A CPU's bf16 matmul kernels are prepared, and kept, one shape at a time (memory grew all
        # run), so there zero rows pad h to a multiple of LOSS_ROWS_MULTIPLE: the matmuls below see
        # few distinct shapes however many targets a batch has. (fp32 keeps nothing per shape, and
        # would only pay for the extra rows.) A zero row adds nothing to the weight's gradient; its
        # loss and its gradient are left out.
        multiple = LOSS_ROWS_MULTIPLE if h.device.type == "cpu" and not plain_fp32 else 1
        n_rows, n_pad = h.size(0), -h.size(0) % multiple
        h, targets = F.pad(h, (0, 0, 0, n_pad)), F.pad(targets, (0, n_pad))
        rows_per_chunk = max(multiple, LOSS_CHUNK // weight.size(0) // multiple * multiple)
        # Only the gradients autograd will ask for: a frozen output layer (LoRA) needs none for its
        # weight.
        needs_grad_h = grad_enabled and ctx.needs_input_grad[0]
        needs_grad_weight = grad_enabled and ctx.needs_input_grad[1]
        needs_grad = needs_grad_h or needs_grad_weight
        grad_h = torch.empty_like(h) if needs_grad_h else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad_weight else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        for i in range(0, h.size(0), rows_per_chunk):
            h_chunk, t_chunk = h[i : i + rows_per_chunk], targets[i : i + rows_per_chunk]
            logits = (h_chunk @ weight.t()).float()  # the softmax wants fp32, even under autocast
            # loss = logsumexp(logits) - logits[target], computed in place: no second buffer this
            # size
            target_logit = logits.gather(1, t_chunk[:, None]).squeeze(1)
            row_max = logits.max(dim=-1, keepdim=True).values
            probs = logits.sub_(row_max).exp_()
            sum_exp = probs.sum(dim=-1, keepdim=True)
            row_loss = row_max.squeeze(1) + sum_exp.squeeze(1).log() - target_logit
            loss_sum += row_loss[: max(0, n_rows - i)].sum()  # the real rows only
            if needs_grad:
                dlogits = probs.div_(sum_exp)  # d loss / d logits = softmax - one_hot(target)
                dlogits[torch.arange(len(t_chunk), device=h.device), t_chunk] -= 1.0
                if not plain_fp32:  # bf16/fp16 weights, or autocast, which picks the precision
                    dlogits = dlogits.to(weight.dtype)
                if needs_grad_h and plain_fp32:
                    torch.mm(dlogits, weight, out=grad_h[i : i + rows_per_chunk])
                elif needs_grad_h:
                    grad_h[i : i + rows_per_chunk] = dlogits @ weight
                if needs_grad_weight and plain_fp32:
                    grad_weight.addmm_(dlogits.t(), h_chunk)
                elif needs_grad_weight:
                    grad_weight += dlogits.t() @ h_chunk
        ctx.save_for_backward(None if grad_h is None else grad_h[:n_rows], grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss_sum

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_weight = ctx.saved_tensors  # None where forward was not asked for it
        if grad_h is not None:
            grad_h = grad_h * grad_loss
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_h, grad_weight, None, None
