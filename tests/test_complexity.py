"""FLOP counts: attention's matrix products are counted on CPU too (torch's counter gave 0 for the
CPU kernel of scaled_dot_product_attention, so a ViT read 25% low without a word)."""
import torch

from tcpnet.utils.complexity import complexity


class _Attention(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, heads, L, D)
        return torch.nn.functional.scaled_dot_product_attention(x, x, x)


def test_attention_flops_are_counted_on_cpu():
    b, h, length, d = 2, 3, 20, 8
    c = complexity(_Attention(), (b, h, length, d))
    assert c["flops"] == 2 * (2 * b * h * length * length * d)  # Q K^T and A V, 2 FLOPs per multiply-add


def test_a_vit_counts_its_attention():
    from tcpnet.models import build_model

    model = build_model("videomae_vit_small", num_classes=10, num_segments=4)
    c = complexity(model, (1, 3, 4, 32, 32))
    tokens, dim, depth = 2 * 2 * 2, 384, 12
    per_block = 4 * tokens * dim * dim + 2 * tokens * dim * 4 * dim + 2 * tokens * tokens * dim  # MACs
    embed = tokens * dim * 3 * 2 * 16 * 16
    assert c["flops"] >= 2 * (depth * per_block + embed)  # every matrix product, attention included
