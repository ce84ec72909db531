"""The published parameter groups and lr schedules on the real TCP TSN-R50."""
import math

import pytest
import torch

from tcpnet.engine.optim import base_lr_at, build_optimizer, build_param_groups, set_lr
from tcpnet.models import build_model

# published counts for TCP-TSN-R50, K=400, default dims (the authors' get_optim_policies)
COUNTS_NPB = {"first_conv_weight": 1, "first_conv_bias": 0, "normal_weight": 54, "normal_bias": 0,
              "BN scale/shift": 110, "LN scale/shift": 0, "TCP_weight": 6, "TCP_bias": 6,
              "TCP_bn scale/shift": 2, "lr5_weight": 1, "lr10_bias": 1}
MULTS = {"first_conv_weight": (1, 1), "first_conv_bias": (2, 0), "normal_weight": (1, 1), "normal_bias": (2, 0),
         "BN scale/shift": (1, 0), "LN scale/shift": (1, 0), "TCP_weight": ("x", 1), "TCP_bias": ("x", 0),
         "TCP_bn scale/shift": ("x", 1), "lr5_weight": ("x", 1), "lr10_bias": ("2x", 0)}


@pytest.fixture(scope="module")
def r50():
    return build_model("tcp_tsn_r50", num_classes=400, num_segments=8)


def _by_name(groups):
    return {g["name"]: g for g in groups}


def test_group_counts_and_multipliers(r50):
    groups = _by_name(build_param_groups(r50, lr_x_factor=5, partial_bn=False))
    assert list(groups) == list(COUNTS_NPB)  # the authors' order (resume needs it)
    assert {n: len(g["params"]) for n, g in groups.items()} == COUNTS_NPB
    for n, (lr_m, wd_m) in MULTS.items():
        lr_m = {"x": 5.0, "2x": 10.0}.get(lr_m, lr_m)
        assert (groups[n]["lr_mult"], groups[n]["decay_mult"]) == (lr_m, wd_m), n
    # with npb every parameter is in exactly one group
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(r50.parameters()))
    names = {id(p): n for n, p in r50.named_parameters()}
    assert [names[id(p)] for p in groups["first_conv_weight"]["params"]] == ["backbone.conv1.weight"]
    assert {names[id(p)] for p in groups["TCP_bn scale/shift"]["params"]} == {
        "head.TCP_att.TSA.norm.weight", "head.TCP_att.TSA.norm.bias"}
    assert [names[id(p)] for p in groups["lr10_bias"]["params"]] == ["fc.bias"]
    assert {"head.layer_reduce1.weight", "head.layer_reduce2.weight"} <= {
        names[id(p)] for p in groups["normal_weight"]["params"]}


def test_partial_bn_and_pretrained_dim(r50):
    pbn = _by_name(build_param_groups(r50, lr_x_factor=5, partial_bn=True))
    assert len(pbn["BN scale/shift"]["params"]) == 0
    assert len(pbn["TCP_bn scale/shift"]["params"]) == 2 and len(pbn["normal_weight"]["params"]) == 54
    # pretrained_dim != dim: layer_reduce2 / layer_reduce_bn2 move into the TCP groups
    moved = _by_name(build_param_groups(r50, lr_x_factor=5, pretrained_dim=256))
    assert len(moved["normal_weight"]["params"]) == 53 and len(moved["TCP_weight"]["params"]) == 7
    assert len(moved["BN scale/shift"]["params"]) == 108 and len(moved["TCP_bn scale/shift"]["params"]) == 4


def test_published_effective_learning_rates(r50):
    # the authors' TSN-R50 8f script: backbone 0.015, TCP attention and fc.weight 0.075, fc.bias 0.15;
    # x0.1 from epoch 20, x0.01 from epoch 40 (epochs counted from 0)
    opt = build_optimizer(r50, lr=0.015, momentum=0.9, weight_decay=1e-4, lr_x_factor=5)
    assert opt.defaults["momentum"] == 0.9 and not opt.defaults["nesterov"]
    for epoch, factor in [(0, 1), (19, 1), (20, 0.1), (39, 0.1), (40, 0.01), (49, 0.01)]:
        set_lr(opt, base_lr_at(epoch, lr=0.015, schedule="step", lr_steps=[20, 40], epochs=50))
        g = _by_name(opt.param_groups)
        assert g["normal_weight"]["lr"] == pytest.approx(0.015 * factor)
        assert g["TCP_weight"]["lr"] == pytest.approx(0.075 * factor)
        assert g["lr5_weight"]["lr"] == pytest.approx(0.075 * factor)
        assert g["lr10_bias"]["lr"] == pytest.approx(0.15 * factor)
        assert g["normal_weight"]["weight_decay"] == pytest.approx(1e-4)
        assert g["TCP_bn scale/shift"]["weight_decay"] == pytest.approx(1e-4)  # weight-decayed (sic)
        assert g["BN scale/shift"]["weight_decay"] == 0 and g["lr10_bias"]["weight_decay"] == 0


def test_cosine_and_warmup():
    assert base_lr_at(0, lr=0.1, schedule="cos", epochs=10) == pytest.approx(0.1)
    assert base_lr_at(5, lr=0.1, schedule="cos", epochs=10) == pytest.approx(0.05)
    assert base_lr_at(9, lr=0.1, schedule="cos", epochs=10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))
    # linear warm-up over 2 epochs of 10 iterations: factor (global_iter + 1) / 20
    kw = dict(lr=0.1, schedule="step", lr_steps=[5], epochs=10, warmup_epochs=2, iters_per_epoch=10)
    assert base_lr_at(0, iteration=0, **kw) == pytest.approx(0.1 / 20)
    assert base_lr_at(1, iteration=4, **kw) == pytest.approx(0.1 * 15 / 20)
    assert base_lr_at(1, iteration=9, **kw) == pytest.approx(0.1)
    assert base_lr_at(2, iteration=0, **kw) == pytest.approx(0.1)
    assert base_lr_at(5, iteration=0, **kw) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="lr_schedule"):
        base_lr_at(0, lr=0.1, schedule="poly")


def test_sgd_step_uses_group_multipliers():
    # one SGD step on a tiny model: the fc bias moves 2*lr_x times as far as a backbone conv would
    torch.manual_seed(0)
    m = build_model("tcp_tiny", num_classes=3, num_segments=4)
    opt = build_optimizer(m, lr=0.1, momentum=0.9, weight_decay=0.0, lr_x_factor=5)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    before = m.fc.bias.detach().clone(), m.backbone.conv1.weight.detach().clone()
    opt.step()
    assert torch.allclose(before[0] - m.fc.bias, torch.full_like(before[0], 0.1 * 10))
    assert torch.allclose(before[1] - m.backbone.conv1.weight, torch.full_like(before[1], 0.1))


def _tiny(**kw):
    torch.manual_seed(0)
    return build_model("tcp_tiny", num_classes=3, num_segments=4, **kw)


def test_parameters_of_non_leaf_modules_are_grouped():
    """Parameters owned directly by a module that also has children (an attention module's
    in_proj_weight, a ViT's cls_token/pos_embed) must land in a group, not be skipped."""
    m = _tiny()
    m.head.mha = torch.nn.MultiheadAttention(8, 2)            # in_proj_* on a non-leaf module
    m.backbone.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
    m.backbone.pos_embed = torch.nn.Parameter(torch.zeros(1, 8))
    groups = _by_name(build_param_groups(m))
    names = {id(p): n for n, p in m.named_parameters()}
    grouped = {names[id(p)]: g for g, grp in groups.items() for p in grp["params"]}
    assert grouped["head.mha.in_proj_weight"] == "normal_weight"
    assert grouped["head.mha.in_proj_bias"] == "normal_bias"
    assert grouped["head.mha.out_proj.weight"] == "normal_weight"
    # position tables and tokens: grouped (every parameter is), and never weight-decayed
    assert grouped["backbone.cls_token"] == "pos_embed" and groups["pos_embed"]["decay_mult"] == 0.0
    assert grouped["backbone.pos_embed"] == "pos_embed" and groups["pos_embed"]["lr_mult"] == 1.0
    assert set(grouped) == {n for n, _ in m.named_parameters()}


def test_a_tied_parameter_is_grouped_once():
    """A weight shared by two modules (tied embeddings, a shared projection) is one parameter: it
    is in exactly one group, at its first module, and the optimizer steps it once (this used to be
    refused as "in more than one group")."""
    m = _tiny()
    m.head.extra = torch.nn.Linear(4, 4)
    m.backbone.extra = torch.nn.Linear(4, 4)
    m.backbone.extra.weight = m.head.extra.weight                  # tied across two modules
    groups = build_param_groups(m)
    ids = [id(p) for g in groups for p in g["params"]]
    assert ids.count(id(m.head.extra.weight)) == 1 and len(ids) == len(set(ids))
    assert len(ids) == len(list(m.parameters()))  # every parameter, each once
    opt = build_optimizer(m, lr=0.1, momentum=0.0, weight_decay=0.0)
    before = m.head.extra.weight.detach().clone()
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    lr = next(g["lr"] for g in opt.param_groups if any(p is m.head.extra.weight for p in g["params"]))
    torch.testing.assert_close(m.head.extra.weight.detach(), before - lr)  # one step, not two


def test_every_batchnorm_kind_is_a_bn_group_member():
    """SyncBatchNorm and BatchNorm3d are BN layers for the optimizer too (one BN helper)."""
    m = _tiny()
    m.head.bn3d = torch.nn.BatchNorm3d(4)
    m = torch.nn.SyncBatchNorm.convert_sync_batchnorm(m)
    groups = _by_name(build_param_groups(m))
    names = {id(p): n for n, p in m.named_parameters()}
    bn = {names[id(p)] for p in groups["BN scale/shift"]["params"]}
    assert {"head.bn3d.weight", "head.bn3d.bias", "backbone.bn1.weight"} <= bn
    pbn = _by_name(build_param_groups(m, partial_bn=True))
    assert not pbn["BN scale/shift"]["params"]


def test_partial_bn_left_out_parameters_are_named():
    from tcpnet.engine.optim import left_out_parameters

    m = _tiny(partial_bn=True)
    m.train()
    # the published recipe keeps the first BN out of every group although it stays trainable
    assert left_out_parameters(m, partial_bn=True) == ["backbone.bn1.weight", "backbone.bn1.bias"]
    assert left_out_parameters(m, partial_bn=False) == []


def test_adamw_uses_the_same_groups_with_decoupled_decay():
    m = _tiny()
    opt = build_optimizer(m, lr=1e-3, name="adamw", weight_decay=0.05, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW)
    g = _by_name(opt.param_groups)
    assert g["normal_weight"]["weight_decay"] == pytest.approx(0.05) and g["BN scale/shift"]["weight_decay"] == 0
    assert g["lr10_bias"]["lr"] == pytest.approx(1e-3 * 10) and g["normal_weight"]["betas"] == (0.9, 0.95)
    before = m.fc.weight.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only the decoupled decay moves the weights, by lr * wd * lr_mult
    assert torch.allclose(m.fc.weight, before * (1 - 1e-3 * 5 * 0.05))
    with pytest.raises(ValueError, match="train.optimizer"):
        build_optimizer(m, lr=0.1, name="lamb")


def test_layer_decay_splits_the_backbone_groups_by_layer():
    """train.layer_decay: backbone layer k of L trains at decay^(L-k) x its group's rate; the head
    and classifier keep theirs; every parameter is still in exactly one group."""
    m = _tiny()
    plain = _by_name(build_param_groups(m, lr_x_factor=5))
    groups = build_param_groups(m, lr_x_factor=5, layer_decay=0.5)
    by = _by_name(groups)
    names = {id(p): n for n, p in m.named_parameters()}
    assert [names[id(p)] for p in by["first_conv_weight@layer0"]["params"]] == ["backbone.conv1.weight"]
    assert by["first_conv_weight@layer0"]["lr_mult"] == pytest.approx(0.5 ** 5)   # L = 5 (stem + 4 stages)
    assert by["normal_weight@layer4"]["lr_mult"] == pytest.approx(0.5)
    assert by["BN scale/shift@layer2"]["lr_mult"] == pytest.approx(0.5 ** 3) and by["BN scale/shift@layer2"]["decay_mult"] == 0
    assert by["TCP_weight"]["lr_mult"] == plain["TCP_weight"]["lr_mult"] == 5.0      # the head's own groups
    assert by["lr5_weight"]["params"] == plain["lr5_weight"]["params"]
    assert {names[id(p)] for p in by["normal_weight"]["params"]} == {
        n for n in (names[id(p)] for p in plain["normal_weight"]["params"]) if not n.startswith("backbone.")}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    r2p1 = build_model("r2plus1d_r18", num_classes=3, num_segments=4)
    with pytest.raises(ValueError, match="R2Plus1D declares no layers"):
        build_param_groups(r2p1, layer_decay=0.5)


def test_a_frozen_backbone_is_in_no_group_and_stays_in_eval_mode():
    m = _tiny().freeze_backbone()
    m.train()
    assert m.training and not m.backbone.training and all(not b.training for b in m.backbone.modules())
    groups = build_param_groups(m)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in grouped for p in m.backbone.parameters())
    assert all(id(p) in grouped for n, p in m.named_parameters() if not n.startswith("backbone."))


def test_bias_lr_mult_sets_the_bias_rate_and_rejects_bad_values():
    """train.bias_lr_mult: published TCP biases train at 2x their weights' rate (the default); the
    ViT/Swin/X3D recipes at 1x. The head's own families are not affected."""
    m = _tiny()
    published = _by_name(build_param_groups(m, lr_x_factor=5))
    plain = _by_name(build_param_groups(m, lr_x_factor=5, bias_lr_mult=1))
    assert published["normal_bias"]["lr_mult"] == 2.0 and published["lr10_bias"]["lr_mult"] == 10.0
    assert plain["normal_bias"]["lr_mult"] == plain["first_conv_bias"]["lr_mult"] == 1.0
    assert plain["lr10_bias"]["lr_mult"] == plain["lr5_weight"]["lr_mult"] == 5.0
    assert plain["TCP_bias"]["lr_mult"] == published["TCP_bias"]["lr_mult"] == 5.0
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="train.bias_lr_mult must be a finite number > 0"):
            build_optimizer(m, lr=0.1, bias_lr_mult=bad)


def test_bias_lr_mult_is_a_checked_config_key():
    from tcpnet.config import ConfigError, load_config

    assert load_config(None).train.bias_lr_mult == 2.0
    assert load_config(None, ["train.bias_lr_mult=1"]).train.bias_lr_mult == 1.0
    for bad in ("0", "-2", "nan", "1e9"):
        with pytest.raises(ConfigError, match=r"train\.bias_lr_mult must be > 0 and <= 100"):
            load_config(None, [f"train.bias_lr_mult={bad}"])
