"""Step 1: one CSV row of statistics per frame of every source image.

    python gen_sample_info.py --out live_mitotracker.csv [--only A B | --skip A B] SRC [SRC ...]

Each SRC holds <category>/{train,valid}/<files>; a SRC named `live` means TIFF stack
pages are time points. See utils/info.py for the columns and how statistics stay cheap.
"""

import utils  # noqa: F401  (quiets library import warnings)
from utils.errors import run_cli
from utils.info import build_info, check_out, write_info


def main(*sources: str, out: str, only=None, skip=None, channel="0", force: bool = False) -> None:
    """Write the info CSV `out` for the category folders of every SRC.

    only/skip: category names (repeat or comma-separate); channel: a channel index,
    several (0,1) or `all`; force: replace an existing `out`."""
    check_out(out, force)  # before scanning: that can take long on a facility's data
    df = build_info(sources, _names(only), _names(skip), _channel(channel))
    write_info(df, out, force)
    print(f"{out}: {len(df)} frames from {df.attrs['n_files']} files in {df.category.nunique()} "
          f"categories; {df.attrs['n_bad']} bad files skipped")


def _names(v):
    """fire gives a str, a tuple or None for --only/--skip; accept `a,b` and `a b` alike."""
    if v is None:
        return None
    items = [v] if isinstance(v, str) else list(v)
    return [s for item in items for s in str(item).split(",") if s]


def _channel(v):
    if isinstance(v, str) and v.lower() == "all":
        return "all"
    if isinstance(v, (tuple, list)):
        return [int(c) for c in v]
    return [int(c) for c in str(v).split(",")]


if __name__ == "__main__":
    run_cli(main)
