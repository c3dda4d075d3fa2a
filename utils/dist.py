"""Who does what when a step runs as several processes (`accelerate launch --num_processes N`).

Ranks never hand work to each other: every rank computes the same plan from the same inputs (seeded,
sorted) and takes its own contiguous share of it, so a process needs only its rank and the world size,
and the output is the one process's output. Contiguous shares keep a file's tiles or frames together
(one open file at a time, most files written whole by one rank); only a file that straddles a share
boundary is split, which is how one huge time-lapse spreads over every rank.

Outside a launcher (no WORLD_SIZE > 1 in the environment) nothing is initialised: one process, rank 0,
barriers do nothing, so single-process runs behave exactly as before.
"""
import os
from datetime import timedelta
from typing import Any, List, Optional, Sequence, Tuple

__all__ = ["launched", "rank", "world", "is_main", "barrier", "gather", "finish", "owners", "share", "share_frames",
           "device"]

# A barrier waits for the slowest rank, which on terabytes can take hours; a rank that dies is caught by
# the launcher (it stops the others), so the only cost of a long timeout is waiting on a hung rank.
TIMEOUT = timedelta(hours=24)
_STATE = None


def launched() -> bool:
    """True inside `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _state():
    """accelerate's PartialState, created on first use (gloo on CPU, nccl on CUDA); None for one process."""
    global _STATE
    if _STATE is None and launched():
        import torch
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        _STATE = PartialState(cpu=cpu, timeout=TIMEOUT)
    return _STATE


def rank() -> int:
    return _state().process_index if launched() else 0


def world() -> int:
    return _state().num_processes if launched() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for with one process)."""
    if launched():
        _state().wait_for_everyone()


def finish() -> None:
    """Close the process group once every rank is done with it: one left open when the interpreter exits can
    abort a rank from the communication threads' destructors ("terminate called without an active exception",
    seen once in a two-process test run after every file was written)."""
    global _STATE
    if _STATE is not None:
        _STATE.destroy_process_group()
        _STATE = None


def gather(obj: Any) -> List[Any]:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` with one process): small summaries only."""
    if not launched():
        return [obj]
    import torch.distributed as td
    _state()
    out: List[Any] = [None] * td.get_world_size()
    td.all_gather_object(out, obj)
    return out


def owners(costs: Sequence[float], n: Optional[int] = None) -> List[int]:
    """The rank that does each item: contiguous runs of about equal total cost, the same on every rank.

    An item goes to the rank whose slice of the cumulative cost holds the item's midpoint, so the
    ranks are non-decreasing along the list and a costly item is not split from its neighbours' order."""
    n = world() if n is None else n
    total = float(sum(costs))
    if n <= 1 or not costs:
        return [0] * len(costs)
    if total <= 0:
        costs, total = [1.0] * len(costs), float(len(costs))
    out, run = [], 0.0
    for c in costs:
        out.append(min(n - 1, int((run + c / 2) / total * n)))
        run += c
    return out


def share(items: Sequence[Any], costs: Optional[Sequence[float]] = None) -> List[Any]:
    """This rank's contiguous share of `items` (all of them with one process)."""
    if not launched():
        return list(items)
    me = rank()
    return [it for it, r in zip(items, owners(costs if costs is not None else [1.0] * len(items))) if r == me]


def device(requested: str) -> str:
    """`cuda` (no index) under a launcher means this rank's own GPU (LOCAL_RANK, wrapping round when ranks
    outnumber the GPUs, as accelerate does); anything else is kept."""
    if launched() and requested == "cuda":
        import torch
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % max(1, torch.cuda.device_count())}"
    return requested


def share_frames(counts: Sequence[Tuple[int, float]], me: Optional[int] = None,
                 n: Optional[int] = None) -> Tuple[List[Tuple[int, Optional[List[int]]]], List[int]]:
    """Share items made of frames (a file to restore: `counts[i]` = (its output frames, cost of one)) frame by
    frame, in order, in contiguous runs of about equal cost.

    Returns this rank's work, `(i, None)` for an item wholly its own and `(i, frames)` for its frames of an item
    shared with other ranks, and the shared items (rank 0 puts them together after a barrier). An item of no
    frames (a file that cannot be read) is rank 0's, which then reports it as one process would. `me`/`n`:
    another rank / world size than this process's (tests)."""
    units = [(i, f) for i, (k, _) in enumerate(counts) for f in range(k)]
    who = owners([counts[i][1] for i, _ in units], n)
    me, ranks, mine = rank() if me is None else me, {}, {}
    for (i, f), r in zip(units, who):
        ranks.setdefault(i, set()).add(r)
        if r == me:
            mine.setdefault(i, []).append(f)
    work, shared = [], []
    for i in range(len(counts)):
        rs = ranks.get(i, {0})
        if len(rs) > 1:
            shared.append(i)
        if rs == {me}:
            work.append((i, None))
        elif me in rs:
            work.append((i, mine[i]))
    return work, shared
