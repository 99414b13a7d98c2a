"""A trial's state at a dev checkpoint, to go on from there later as if it had never stopped.

An early-stopping search stops masks at its rungs; a stopped mask it promotes later trains to the end. It goes
on from the state kept where it stopped rather than from step 0: the weights, AdamW's moments, the schedule's
position, the random state, the steps' losses and counts, and the dev curve so far. An epoch's batches follow
from the seed and the epoch alone (``loop.epoch_batches``), so a resumed trial trains on the same batches in
the same order and ends where one never stopped ends (``tests/training/test_resume.py``: same scores, same
losses on a CPU). Its training energy is that of the resumed part only.

The state lives in the results store (``resume/<config hash>.pt``), where a worker on any node finds it; a
search writes it only at the steps where its scheduler may stop a trial (the rungs) and removes it once the
mask has trained to the end. A trial that stops early on dev F1 (``early_stopping_patience``) is not resumed:
the weights it would keep are another epoch's.
"""

from __future__ import annotations

import io

import torch

FOLDER = "resume"


def resumable(training) -> bool:
    """Whether a trial with these training settings can be stopped and resumed (no early stopping on dev)."""
    return not training.early_stopping_patience


def loop_state(model, optimizer, scheduler, losses: list, epoch_seconds: list[float], partial: float, tokens: int,
               padded: int, rng: dict) -> dict:
    """The training loop's state after ``len(losses)`` steps (``partial``: seconds of the epoch under way)."""
    return {"step": len(losses), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "losses": [float(loss) for loss in losses],
            "epoch_seconds": list(epoch_seconds), "partial": partial, "tokens": tokens, "padded": padded, **rng}


def random_state(device: torch.device) -> dict:
    """torch's random state (the dropout masks' source), on the CPU and on the trial's GPU."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_loop(state: dict, model, optimizer, scheduler, device: torch.device) -> tuple:
    """Put the model, optimizer, schedule and random state back as ``loop_state`` found them; returns the steps
    done, the seconds of the epoch under way, the finished epochs' seconds, the losses and the token counts."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    losses = [torch.tensor(loss) for loss in state["losses"]]
    return state["step"], state["partial"], list(state["epoch_seconds"]), losses, state["tokens"], state["padded"]


def pack(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def unpack(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def keep(store, config_hash: str, state: dict) -> str:
    """Write a trial's state to the store (all of it or nothing, as every file of the store)."""
    return store.write_bytes(pack(state), FOLDER, f"{config_hash}.pt")


def kept(store, config_hash: str) -> dict | None:
    """The state kept for a configuration, or None."""
    data = store.read_bytes(f"{FOLDER}/{config_hash}.pt")
    return unpack(data) if data is not None else None


def forget(store, config_hash: str) -> None:
    """Remove a configuration's kept state (it trained to the end); none there is fine."""
    try:
        store.fs.delete_file(store.path(f"{FOLDER}/{config_hash}.pt"))
    except (FileNotFoundError, OSError):
        pass
