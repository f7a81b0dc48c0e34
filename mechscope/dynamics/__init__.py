"""Training dynamics: phase changes across checkpoints, found with no behaviour named in advance.

    from mechscope.dynamics import CheckpointSeries, analyse
    series = CheckpointSeries.from_zoo("induction")
    res = analyse(series, from_zoo_run(series.zoo_run))
    res.dynamics.boundaries        # steps where many series change at once, with the components that moved

`series.py` (the checkpoints, loaded one at a time), `data.py` (fixed evaluation tokens), `measures.py`
(per-checkpoint measures), `changepoints.py` (the detector, its null and the phases), `study.py` (the
`mechscope dynamics` command and its checks on zoo runs), `figures.py` (dynamics.html).
"""

from .changepoints import Dynamics, detect, find_dynamics, null_threshold
from .data import HeldOut, from_file, from_zoo_run
from .measures import Measures, Series, effective_rank, measure_series
from .series import CheckpointSeries, SeriesError
from .study import DynamicsConfig, Result, analyse

__all__ = ["CheckpointSeries", "Dynamics", "DynamicsConfig", "HeldOut", "Measures", "Result", "Series", "SeriesError",
           "analyse", "detect", "effective_rank", "find_dynamics", "from_file", "from_zoo_run", "measure_series",
           "null_threshold"]
