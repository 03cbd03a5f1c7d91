"""The training loop every Ray Train worker runs. Users never write it.

It builds the model from the registry, reads its shard, restores the newest committed
checkpoint if there is one (model, optimiser, scheduler, RNG, data position, early-stopping
state — all of it), and trains with DDP across the worker group. Determinism: the model is
initialised from the job seed, the data order is a seeded permutation per (epoch, rank),
intra-op threads are fixed, DDP averages gradients in a fixed bucket order; restoring a
checkpoint puts every one of those back, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keel.trainer import _checkpoint as ck
from keel.trainer import _data, _objectives
from keel.trainer._errors import ResumeConflictError
from keel.trainer._faults import FaultPlan
from keel.trainer._registry import ModelRegistry
from keel.trainer._spec import TrainJob

PROGRESS_EVERY_S = 0.5


@dataclass
class LoopState:
    """Where the loop is: restored whole from a checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    last_loss: float = math.nan
    history: list[dict[str, float]] = field(default_factory=list)


class _Events:
    """Rank 0's fire-and-forget channel to the driver (a Ray actor); other ranks are silent."""

    def __init__(self, sink: Any, rank: int) -> None:
        self.sink = sink if rank == 0 else None

    def put(self, kind: str, **data: Any) -> None:
        if self.sink is not None:
            self.sink.put.remote({"type": kind, "t": time.time(), **data})

    def wait_allowed(self, epoch: int, poll_s: float = 0.05) -> None:
        if self.sink is None:
            return
        import ray

        while True:
            try:
                if ray.get(self.sink.may_continue.remote(epoch), timeout=10):
                    return
            except Exception:  # the sink is restarting: ask again
                pass
            time.sleep(poll_s)

    def stop_requested(self) -> bool:
        if self.sink is None:
            return False
        import ray

        try:
            return bool(ray.get(self.sink.should_stop.remote(), timeout=10))
        except Exception:  # the driver is gone or slow: keep training, it can resume anyway
            return False


def plan(job: TrainJob, num_rows: int, world: int) -> tuple[int, int, int]:
    """(rows per worker per epoch, local batch size, steps per epoch): the same on every
    worker, computed without reading data."""
    rows = _data.train_rows_per_shard(num_rows, world, job.seed, job.data.validation_fraction)
    common = min(rows)
    local_batch = job.train.batch_size // world
    steps = math.ceil(common / local_batch) if common else 0
    return common, local_batch, steps


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """The Ray Train worker function (``TorchTrainer(train_loop_per_worker=...)``)."""
    import ray.train
    import torch
    import torch.distributed as dist

    job = TrainJob.model_validate(config["job"])
    registry: ModelRegistry = config["registry"]
    faults: FaultPlan | None = config.get("faults")
    store = ck.CheckpointStore(Path(config["run_dir"]) / "checkpoints")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    events = _Events(config.get("sink"), rank)
    distributed = world > 1 and dist.is_available() and dist.is_initialized()

    torch.set_num_threads(job.scaling.cpus_per_worker)
    if job.scaling.use_gpu:
        import ray.train.torch as rtt

        device = rtt.get_device()
    else:
        device = torch.device("cpu")
    classification = _objectives.classification(job.train.loss)
    shard = _data.read_shard(
        job.data.path,
        job.data.features,
        job.data.target,
        rank=rank,
        world=world,
        seed=job.seed,
        validation_fraction=job.data.validation_fraction,
        classification=classification,
    )
    common, local_batch, steps_per_epoch = plan(job, config["num_rows"], world)
    total_steps = steps_per_epoch * job.train.epochs
    if job.train.max_steps is not None:
        total_steps = min(total_steps, job.train.max_steps)

    torch.manual_seed(job.seed)
    model = registry.build(job.model.builder, job.model.args).to(device)
    optimizer = _objectives.make_optimizer(job.train.optimizer, model.parameters())
    sched_spec = job.train.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _objectives.lr_factor(sched_spec, s, total_steps)
    )
    torch.manual_seed(job.seed * 1000 + rank + 1)  # per-rank stream (dropout etc.)
    state = LoopState()

    resumed_from = None
    latest = store.latest()
    if latest is not None:
        _restore(latest, job, world, rank, model, optimizer, scheduler, state, device)
        resumed_from = latest.step
    ddp = model
    if distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = _objectives.make_loss(job.train.loss)
    x_tr = torch.from_numpy(shard.x_train).to(device)
    y_tr = torch.from_numpy(shard.y_train).to(device)
    events.put(
        "start",
        resumed_from=resumed_from,
        world_size=world,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        pid=os.getpid(),
        epoch=state.epoch,
    )
    amp = job.train.amp_bf16 and device.type == "cuda"

    last_ckpt = [resumed_from]

    def checkpoint() -> None:
        t0 = time.perf_counter()
        _save(store, job, world, rank, model, optimizer, scheduler, state, faults, distributed)
        last_ckpt[0] = state.global_step
        events.put("checkpoint", step=state.global_step, seconds=time.perf_counter() - t0)

    def stop_now() -> bool:
        flag = torch.tensor([1 if events.stop_requested() else 0], dtype=torch.int32)
        if distributed:
            dist.broadcast(flag, src=0)
        return bool(flag.item())

    gated = bool(config.get("gate_epochs"))

    def wait_for_driver(epoch: int) -> None:
        """Epoch gate: rank 0 waits until the driver has handled this epoch's event (a Tune
        trial: until ASHA let it continue); the other ranks wait for rank 0."""
        if rank == 0:
            events.wait_allowed(epoch)
        if distributed:
            dist.barrier()

    last_report = time.perf_counter()
    window_steps, window_t0 = 0, time.perf_counter()
    status = "completed"
    while (
        state.epoch < job.train.epochs
        and state.global_step < total_steps
        and not state.stopped_early
    ):
        order = torch.from_numpy(
            _data.epoch_order(job.seed, state.epoch, rank, len(shard.x_train), common)
        ).to(device)
        model.train()
        while state.step_in_epoch < steps_per_epoch and state.global_step < total_steps:
            t_step = time.perf_counter()
            idx = order[state.step_in_epoch * local_batch : (state.step_in_epoch + 1) * local_batch]
            xb, yb = x_tr[idx], y_tr[idx]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                out = ddp(xb)
            loss = loss_fn(out.float(), yb)
            loss.backward()
            if job.train.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), job.train.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            state.global_step += 1
            state.step_in_epoch += 1
            state.last_loss = loss.item()
            window_steps += 1
            if faults is not None:
                faults.after_step(state.global_step, rank)
            now = time.perf_counter()
            if rank == 0 and now - last_report >= PROGRESS_EVERY_S:
                dt = now - window_t0
                events.put(
                    "progress",
                    epoch=state.epoch,
                    step=state.global_step,
                    loss=state.last_loss,
                    samples_per_s=window_steps * local_batch * world / dt if dt > 0 else 0.0,
                    step_s=now - t_step,
                    total_steps=total_steps,
                )
                last_report, window_steps, window_t0 = now, 0, now
            if state.global_step % job.train.checkpoint_every_steps == 0:
                checkpoint()
                if stop_now():
                    status = "stopped"
                    break
        if status == "stopped":
            break
        if state.step_in_epoch >= steps_per_epoch:
            metrics = _validate(job, shard, model, device, distributed, classification)
            metrics["epoch"] = float(state.epoch)
            metrics["train_loss"] = state.last_loss
            state.history.append(metrics)
            _early_stopping(job, state, metrics)
            done_epoch = state.epoch
            state.epoch += 1
            state.step_in_epoch = 0
            if gated and last_ckpt[0] != state.global_step:
                checkpoint()  # what the driver hears about is committed first
            events.put("epoch", epoch=done_epoch, step=state.global_step, metrics=metrics)
            if gated:
                wait_for_driver(done_epoch)
                more = (
                    state.epoch < job.train.epochs
                    and state.global_step < total_steps
                    and not state.stopped_early
                )
                if more and stop_now():  # stopped at the gate: right at this checkpoint
                    status = "stopped"
                    break
    if status != "stopped":
        if state.stopped_early:
            status = "early_stopped"
        if last_ckpt[0] != state.global_step:
            checkpoint()
    events.put("done", status=status, step=state.global_step, epoch=state.epoch)
    return {"status": status, "step": state.global_step, "history": state.history}


def _early_stopping(job: TrainJob, state: LoopState, metrics: dict[str, float]) -> None:
    es = job.train.early_stopping
    if es is None:
        return
    value = metrics.get(es.metric)
    if value is None or math.isnan(value):
        return
    better = (
        state.best is None
        or (es.mode == "min" and value < state.best - es.min_delta)
        or (es.mode == "max" and value > state.best + es.min_delta)
    )
    if better:
        state.best, state.bad_epochs = value, 0
    else:
        state.bad_epochs += 1
        if state.bad_epochs >= es.patience:
            state.stopped_early = True


def _validate(
    job: TrainJob, shard: Any, model: Any, device: Any, distributed: bool, classification: bool
) -> dict[str, float]:
    """Validation metrics over every worker's validation rows (sums all-reduced)."""
    import torch
    import torch.distributed as dist

    keys = ["loss_sum", "_elems", "sq_sum", "abs_sum", "correct"]
    totals = dict.fromkeys(keys, 0.0)
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(shard.x_val).to(device)
        y = torch.from_numpy(shard.y_val).to(device)
        for i in range(0, len(x), 8192):
            out = model(x[i : i + 8192]).float()
            for k, v in _objectives.metric_sums(
                job.train.loss, job.train.metrics, out, y[i : i + 8192]
            ).items():
                totals[k] += v
    model.train()
    vec = torch.tensor([totals[k] for k in keys], dtype=torch.float64)
    if distributed:
        dist.all_reduce(vec)
    totals = dict(zip(keys, vec.tolist(), strict=True))
    if not totals["_elems"]:
        return {}
    return _objectives.finish_metrics(job.train.loss, job.train.metrics, totals)


def _save(
    store: ck.CheckpointStore,
    job: TrainJob,
    world: int,
    rank: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: LoopState,
    faults: FaultPlan | None,
    distributed: bool,
) -> None:
    import torch
    import torch.distributed as dist

    step = state.global_step
    if rank == 0:
        partial = store.begin(step)
    if distributed:
        dist.barrier()
    partial = store.partial_dir(step)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        rng["cuda"] = torch.cuda.get_rng_state()
    ck.write_file(partial / ck.rng_file(rank), ck.tensors_to_bytes(rng))
    if distributed:
        dist.barrier()
    if rank == 0:
        tensors: dict[str, Any] = {}
        structure = {
            "model": ck.flatten(model.state_dict(), "model", tensors),
            "optimizer": ck.flatten(optimizer.state_dict(), "optimizer", tensors),
            "scheduler": ck.flatten(scheduler.state_dict(), "scheduler", tensors),
            "loop": asdict(state),
        }
        ck.write_file(partial / ck.STATE_TENSORS, ck.tensors_to_bytes(tensors))
        ck.write_file(
            partial / ck.STATE_JSON, json.dumps(structure, sort_keys=True, allow_nan=True).encode()
        )
        if faults is not None:
            faults.in_checkpoint(step, rank)
        store.commit(partial, step, {"job_digest": job.digest(), "world_size": world})
        store.prune(job.train.keep_checkpoints)
    if distributed:
        dist.barrier()


def _restore(
    c: ck.Committed,
    job: TrainJob,
    world: int,
    rank: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: LoopState,
    device: Any,
) -> None:
    import torch

    if c.commit.get("job_digest") != job.digest():
        raise ResumeConflictError(
            f"job {job.name!r} has checkpoints from a different job spec ({c.path}); use a new "
            "job name or fresh=True (keel train --fresh) to discard them"
        )
    if c.commit.get("world_size") != world:
        raise ResumeConflictError(
            f"job {job.name!r} was checkpointed with {c.commit.get('world_size')} workers, now "
            f"{world}: the data shards differ. Resume with the same num_workers, or fresh=True"
        )
    tensors = ck.tensors_from_bytes(c.read(ck.STATE_TENSORS))
    structure = json.loads(c.read(ck.STATE_JSON))
    model.load_state_dict(ck.unflatten(structure["model"], tensors))
    optimizer.load_state_dict(ck.unflatten(structure["optimizer"], tensors))
    scheduler.load_state_dict(ck.unflatten(structure["scheduler"], tensors))
    loop = structure["loop"]
    for k, v in loop.items():
        setattr(state, k, v)
    rng = ck.tensors_from_bytes(c.read(ck.rng_file(rank)))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
