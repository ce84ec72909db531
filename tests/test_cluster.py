"""Training that survives a cluster: mid-epoch checkpoints with exact continuation after a SIGKILL
at any iteration (1 process and 2 under torchrun), stop signals, two torchrun "nodes", an elastic
restart, and the non-finite guard."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = """
import logging, os, sys, torch
logging.basicConfig(level=logging.INFO)
from tcpnet.config import load_config
from tcpnet.engine.preemption import EXIT_PREEMPTED, Preempted
from tcpnet.engine.train import train
rank = os.environ.get("RANK", "0")
pids = os.environ.get("TCPNET_TEST_PIDS")
if pids:  # let the test find (and kill) this worker
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    with open(os.path.join(pids, f"rank{rank}.restart{restart}.pid"), "w") as f:
        f.write(str(os.getpid()))
try:
    res = train(load_config(None, sys.argv[1:]))
except Preempted as e:
    print(f"PREEMPTED: {e}", flush=True)
    sys.exit(EXIT_PREEMPTED)
torch.save(res["model"].state_dict(), os.path.join(res["output_dir"], f"final_rank{rank}.pt"))
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tcpnet.tools.synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, seed=2, num_classes=4, train_per_class=4, val_per_class=2,
                           num_frames=16, size=64, progress=False)
    return root


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "run_train.py"
    path.write_text(SCRIPT)
    return path


def _args(data: Path, out: Path, *extra: str) -> list:
    """16 videos, batch 4: 4 iterations per epoch, 2 epochs, a checkpoint every 2 iterations."""
    return ["model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=16", "model.kwargs.mid_channels=32",
            "model.dropout=0.3", f"data.root={data}", f"data.train_list={data}/train.txt",
            f"data.val_list={data}/val.txt", "data.num_workers=1", "data.flip=true", "data.crop_size=48",
            "data.scale_size=56", "train.epochs=2", "train.batch_size=4", "train.lr=0.02", "train.lr_steps=[1]",
            "train.log_every=1", "train.checkpoint_every=2", "test.batch_size=8", f"output_dir={out}", "seed=5",
            "device=cpu", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*flags: str) -> list:
    return [sys.executable, "-m", "torch.distributed.run", *flags]


def _start(cmd: list, env=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or ENV,
                            start_new_session=True)


def _records(out: Path, event: str = "train") -> list:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if r["event"] == event]


def _wait_for(out: Path, epoch: int, it: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(r["epoch"] == epoch and r["iter"] >= it for r in _records(out)):
            return
        time.sleep(0.01)
    raise AssertionError(f"never reached epoch {epoch} iteration {it}: {proc.stdout.read().decode()[-3000:]}")


def _finish(proc: subprocess.Popen, code: int = 0, timeout: float = 600) -> str:
    out = proc.communicate(timeout=timeout)[0].decode()
    assert proc.returncode == code, out[-4000:]
    return out


def _assert_same_weights(a: Path, b: Path, tol: float = 1e-6) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert set(sa) == set(sb)
    for k in sa:
        diff = (sa[k].double() - sb[k].double()).abs().max().item()
        assert diff <= tol, (k, diff)


@pytest.fixture(scope="module")
def reference_1p(tiny_data, script, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref1p") / "run"
    _finish(_start([sys.executable, str(script), *_args(tiny_data, out)]))
    return out


@pytest.fixture(scope="module")
def reference_2p(tiny_data, script, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref2p") / "run"
    _finish(_start(_torchrun("--standalone", "--nproc_per_node=2", str(script)) + _args(tiny_data, out)))
    return out


def test_sigkill_at_any_iteration_then_resume_is_exact(tiny_data, script, reference_1p, tmp_path):
    """Killed after iteration 3 of epoch 2 (its last checkpoint: iteration 2 of epoch 2), the
    resumed run continues at that batch and ends with the uninterrupted run's weights."""
    out = tmp_path / "run"
    proc = _start([sys.executable, str(script), *_args(tiny_data, out)])
    _wait_for(out, epoch=1, it=3, proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["iter"]) == (1, 2)  # inside epoch 2: work lost is bounded by the interval
    (out / ".last.pt.leftover.tmp").write_bytes(b"half a checkpoint")  # as a kill during a write leaves
    resumed = _finish(_start([sys.executable, str(script), *_args(tiny_data, out)]))
    assert "resuming" in resumed and "epoch 2 at iteration 2/4" in resumed
    _assert_same_weights(reference_1p / "final_rank0.pt", out / "final_rank0.pt")
    assert not list(out.glob(".*.tmp"))
    steps = [r["step"] for r in _records(out)]
    assert steps == sorted(set(steps)) == list(range(1, 9))  # every step logged once after the resume
    epochs = _records(out, "epoch")
    assert [r["epoch"] for r in epochs] == [0, 1]
    ref_epochs = _records(reference_1p, "epoch")
    assert epochs[1]["train_loss"] == pytest.approx(ref_epochs[1]["train_loss"], rel=1e-6)  # sums restored


def test_sigkill_under_torchrun_then_resume_is_exact(tiny_data, script, reference_2p, tmp_path):
    out = tmp_path / "run"
    launch = _torchrun("--standalone", "--nproc_per_node=2", str(script)) + _args(tiny_data, out)
    proc = _start(launch)
    _wait_for(out, epoch=0, it=3, proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
    proc.wait(timeout=60)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["iter"]) == (0, 2) and len(ckpt["rng"]) == 2
    _finish(_start(launch))
    for rank in (0, 1):
        _assert_same_weights(reference_2p / "final_rank0.pt", out / f"final_rank{rank}.pt")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_stop_signal_writes_a_checkpoint_and_says_how_to_resume(tiny_data, script, reference_1p, tmp_path, sig):
    out = tmp_path / "run"
    proc = _start([sys.executable, str(script), *_args(tiny_data, out, "train.checkpoint_every=100")])
    _wait_for(out, epoch=0, it=1, proc=proc)
    proc.send_signal(sig)
    text = _finish(proc, code=75)
    line = next(x for x in text.splitlines() if x.startswith("PREEMPTED"))
    assert "stopped on a signal at epoch 1 iteration" in line and str(out / "last.pt") in line and "resume" in line
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and 1 <= ckpt["iter"] < 4
    _finish(_start([sys.executable, str(script), *_args(tiny_data, out, "train.checkpoint_every=100")]))
    _assert_same_weights(reference_1p / "final_rank0.pt", out / "final_rank0.pt")


def test_tcpnet_train_exits_75_on_sigterm(tiny_data, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: {name: tcp_tiny}\n")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "tcpnet", "train", str(cfg), *_args(tiny_data, out, "train.epochs=20")]
    proc = _start(args)
    _wait_for(out, epoch=0, it=1, proc=proc)
    proc.send_signal(signal.SIGTERM)
    text = _finish(proc, code=75)
    assert "received SIGTERM: stopping after the current step" in text
    assert "tcpnet: stopped on a signal at epoch 1 iteration" in text and "last.pt" in text


def test_second_sigint_aborts_at_once():
    from tcpnet.engine.preemption import StopSignals

    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.received == signal.SIGINT and stop.requested(torch.device("cpu")) == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


@pytest.mark.parametrize("target", ["rank1", "torchrun"])
def test_stop_signal_under_torchrun_stops_every_rank_at_the_same_step(tiny_data, script, reference_2p, tmp_path,
                                                                      target):
    """SIGTERM to one rank, or to the torchrun agent (what SLURM's srun forwards): torchrun passes
    it to every worker, and each finishes its step and writes the same checkpoint."""
    out, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    env = {**ENV, "TCPNET_TEST_PIDS": str(pids)}
    launch = _torchrun("--standalone", "--nproc_per_node=2", str(script)) + _args(
        tiny_data, out, "train.checkpoint_every=100")
    proc = _start(launch, env=env)
    _wait_for(out, epoch=0, it=1, proc=proc)
    pid = proc.pid if target == "torchrun" else int((pids / "rank1.restart0.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    text = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode != 0  # torchrun reports the workers' exit code 75 as a failure
    assert text.count("PREEMPTED") == 2, text[-3000:]  # both ranks stopped, with the same message
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["iter"] >= 1 and len(ckpt["epoch_stats"]) == 2  # one per rank, by name
    assert all(set(s) >= {"loss_sum", "clips"} for s in ckpt["epoch_stats"])
    _finish(_start(launch))
    _assert_same_weights(reference_2p / "final_rank0.pt", out / "final_rank1.pt")


def test_tcpnet_train_under_torchrun_prints_one_stop_line_per_node(tiny_data, tmp_path):
    """SIGTERM to the torchrun agent: each rank writes and exits 75 (torchrun itself then exits 1,
    as it does for any non-zero worker), and the node prints the stop line once, not once per rank."""
    out = tmp_path / "run"
    proc = _start(_torchrun("--standalone", "--nproc_per_node=2", "-m", "tcpnet", "train")
                  + [str(_tiny_yaml(tmp_path)), *_args(tiny_data, out, "train.epochs=20")])
    _wait_for(out, epoch=0, it=1, proc=proc)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode != 0
    assert text.count("tcpnet: stopped on a signal at epoch 1") == 1, text[-3000:]
    marker = json.loads((out / "preempted.json").read_text())  # what a job script reads under torchrun
    assert marker["exit_code"] == 75 and marker["checkpoint"] == str(out / "last.pt")
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert (marker["epoch"], marker["iteration"]) == (ckpt["epoch"], ckpt["iter"])


def _tiny_yaml(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: {name: tcp_tiny}\n")
    return cfg


def test_two_nodes_with_c10d_rendezvous(tiny_data, script, tmp_path):
    """Two torchrun launchers (one process each) on 127.0.0.1, as two machines would run them."""
    out = tmp_path / "run"
    port = _free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
              "--rdzv_id=tcpnet-two-nodes", "--max-restarts=0"]
    nodes = [_start(_torchrun(*common, str(script)) + _args(tiny_data, out, "train.epochs=1")) for _ in range(2)]
    texts = [_finish(p) for p in nodes]
    # each node's terminal says which ranks it runs and where the rendezvous is (one line per node)
    lines = sorted(next(ln for ln in t.splitlines() if "node " in ln and ": ranks" in ln) for t in texts)
    assert "node 0: ranks 0-0 of 2" in lines[0] and "node 1: ranks 1-1 of 2" in lines[1]
    a, b = (torch.load(out / f"final_rank{r}.pt", weights_only=True) for r in (0, 1))
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(a[k], b[k]) for k in params)  # bitwise-identical weights on both nodes
    assert _records(out, "start")[0]["world_size"] == 2


def test_elastic_restart_resumes_from_the_last_checkpoint(tiny_data, script, reference_2p, tmp_path):
    """torchrun --max-restarts: a worker killed mid-run makes torchrun restart the group, which
    auto-resumes from last.pt and finishes with the uninterrupted run's weights."""
    out, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    env = {**ENV, "TCPNET_TEST_PIDS": str(pids)}
    proc = _start(_torchrun("--standalone", "--nproc_per_node=2", "--max-restarts=1", str(script))
                  + _args(tiny_data, out), env=env)
    _wait_for(out, epoch=1, it=1, proc=proc)
    os.kill(int((pids / "rank1.restart0.pid").read_text()), signal.SIGKILL)
    _finish(proc)
    assert (pids / "rank0.restart1.pid").exists()  # the group was restarted once
    starts = _records(out, "start")
    assert len(starts) == 2 and starts[1]["start_epoch"] == 1 and starts[1]["resumed_from"]
    for rank in (0, 1):
        _assert_same_weights(reference_2p / "final_rank0.pt", out / f"final_rank{rank}.pt")


# ---------------------------------------------------------------------- in-process checks
def _cfg(data: Path, out: Path, *extra: str):
    from tcpnet.config import load_config
    return load_config(None, _args(data, out, "data.num_workers=0", "train.checkpoint_every=null", *extra))


def _nan_at(monkeypatch, calls: set):
    """Make the training loss NaN at the given (1-based) loss calls."""
    count = {"n": 0}
    original = torch.nn.CrossEntropyLoss.forward

    def forward(self, logits, target):
        count["n"] += 1
        loss = original(self, logits, target)
        return loss * float("nan") if count["n"] in calls else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", forward)


def test_nonfinite_stop_names_iteration_and_videos_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path,
                                                                                      monkeypatch):
    from tcpnet.engine.train import NonFiniteError, train

    out = tmp_path / "run"
    _nan_at(monkeypatch, {6})  # epoch 2, iteration 2 (validation does not call the module's forward)
    with pytest.raises(NonFiniteError, match=r"epoch 2 iteration 2: .*not finite \(batch: .*videos/.*\.mp4") as e:
        train(_cfg(tiny_data, out))
    assert "\n" not in str(e.value)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
                                      if v.is_floating_point())
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == 1


def test_nonfinite_skip_counts_skipped_steps(tiny_data, tmp_path, monkeypatch):
    from tcpnet.engine.train import train

    out = tmp_path / "run"
    _nan_at(monkeypatch, {2, 7})
    train(_cfg(tiny_data, out, "train.nonfinite=skip"))
    epochs = _records(out, "epoch")
    assert [r["skipped_steps"] for r in epochs] == [1, 1]
    assert [r["train_clips"] for r in epochs] == [12, 12]  # the skipped batches are not counted
    state = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_stale_best_checkpoint_is_restored_from_last(tiny_data, tmp_path):
    """A kill between writing last.pt and best.pt leaves an old best.pt; the next start (here a
    finished run: nothing to train) restores it, so `tcpnet test`'s default checkpoint is right."""
    from tcpnet.engine.train import train

    out = tmp_path / "run"
    train(_cfg(tiny_data, out, "train.epochs=1"))
    old_best = torch.load(out / "best.pt", weights_only=True)
    result = train(_cfg(tiny_data, out, "train.epochs=2"))
    last = torch.load(out / "last.pt", weights_only=True)
    if last["best_epoch"] != 1:  # make epoch 2 the best one, as if its validation had improved
        last["best_epoch"], last["best_metric"] = 1, 100.0
        torch.save(last, out / "last.pt")
    torch.save(old_best, out / "best.pt")  # the kill: best.pt still holds epoch 1
    again = train(_cfg(tiny_data, out, "train.epochs=2"))
    assert again["nothing_to_do"] and result["best_checkpoint"] == again["best_checkpoint"]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    assert all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])


def test_resume_with_a_changed_config_names_the_keys(tiny_data, tmp_path):
    from tcpnet.config import ConfigError
    from tcpnet.engine.train import train

    out = tmp_path / "run"
    train(_cfg(tiny_data, out, "train.epochs=1"))
    with pytest.raises(ConfigError, match=r"train\.lr: checkpoint 0\.02, config 0\.5.*force_resume"):
        train(_cfg(tiny_data, out, "train.epochs=2", "train.lr=0.5"))
    with pytest.raises(ConfigError, match=r"model\.kwargs: checkpoint"):
        train(_cfg(tiny_data, out, "train.epochs=2", "model.kwargs.dim=8"))
    result = train(_cfg(tiny_data, out, "train.epochs=2", "train.lr=0.5", "train.force_resume=true"))
    assert result["final"]["epoch"] == 1  # continued, with the new lr
    assert torch.load(out / "last.pt", weights_only=True)["config"]["train"]["lr"] == 0.5


def test_output_dir_problems_are_found_before_training(tiny_data, tmp_path, monkeypatch):
    import errno

    from tcpnet.checkpoints import CheckpointError
    from tcpnet.engine import checkpoint as ckpt_io
    from tcpnet.engine.train import train

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="output_dir is not writable"):
        train(_cfg(tiny_data, blocker / "run"))

    # a full disk while writing epoch 2's checkpoint: the previous last.pt stays and it is said
    out = tmp_path / "run"
    calls = {"n": 0}
    real = ckpt_io.atomic_torch_save

    def full_disk(obj, path):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 writes last.pt and best.pt
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path)

    monkeypatch.setattr(ckpt_io, "atomic_torch_save", full_disk)
    with pytest.raises(CheckpointError, match=r"last\.pt: could not write the checkpoint \(No space left on "
                                              r"device\); the previous last\.pt is intact"):
        train(_cfg(tiny_data, out))
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


def test_each_elastic_attempt_has_its_own_store_keys(monkeypatch):
    """torchrun's store survives a restart: without a per-attempt prefix a restarted rank reads its
    peer's address from the dead attempt and gloo fails with "Connection refused"."""
    import torch.distributed as dist

    from tcpnet.engine.distributed import _per_attempt
    store = dist.HashStore()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    _per_attempt(store).set("default_pg/0//rank_1", "port-of-the-dead-attempt")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = _per_attempt(store)
    assert not second.check(["default_pg/0//rank_1"])
    second.set("default_pg/0//rank_1", "live")
    assert second.get("default_pg/0//rank_1") == b"live"


HOOKED = ("train.ema_decay=0.8", "train.log_grad_norm=true", "train.mixup_alpha=0.4", "train.label_smoothing=0.1")
PROBE = ("train.ema_decay=0.8", "train.log_grad_norm=true", "train.freeze_backbone=true", "train.layer_decay=0.8")
DECAY = ("train.ema_decay=0.8", "train.log_grad_norm=true", "train.layer_decay=0.8")


@pytest.mark.parametrize("nproc,extra", [(1, HOOKED), (2, HOOKED), (1, PROBE), (2, DECAY)],
                         ids=["hooks-1p", "hooks-2p", "frozen-backbone-1p", "layer-decay-2p"])
def test_sigkill_with_ema_grad_norm_and_mixup_then_resume_is_exact(tiny_data, script, tmp_path, nproc, extra):
    """The hooks keep the guarantee: with EMA, gradient-norm logging, mixup and label smoothing on
    (or a frozen backbone, or layer-wise lr decay), a run SIGKILLed inside epoch 2 and resumed
    ends with the uninterrupted run's weights and EMA (1e-6), and logs the same gradient norms."""
    HOOKED = extra  # noqa: N806 - the settings of this case
    launch = ([sys.executable, str(script)] if nproc == 1
              else _torchrun("--standalone", f"--nproc_per_node={nproc}", str(script)))
    ref, out = tmp_path / "ref", tmp_path / "cut"
    _finish(_start(launch + _args(tiny_data, ref, *HOOKED)))
    proc = _start(launch + _args(tiny_data, out, *HOOKED))
    _wait_for(out, epoch=1, it=3, proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert torch.load(out / "last.pt", weights_only=True)["iter"] == 2
    _finish(_start(launch + _args(tiny_data, out, *HOOKED)))
    _assert_same_weights(ref / "final_rank0.pt", out / "final_rank0.pt")
    ema_ref, ema_cut = (torch.load(d / "ema.pt", weights_only=True)["state_dict"] for d in (ref, out))
    assert max((ema_ref[k].double() - ema_cut[k].double()).abs().max().item() for k in ema_ref) <= 1e-6
    norms = [[r["grad_norm"] for r in _records(d)] for d in (ref, out)]
    assert len(norms[0]) == 8 and norms[1] == pytest.approx(norms[0], rel=1e-6)
    groups = [g["name"] for g in _records(ref, "start")[0]["groups"]]
    layered = "train.layer_decay=0.8" in extra and "train.freeze_backbone=true" not in extra  # frozen: no groups
    assert any("@layer" in g for g in groups) == layered
