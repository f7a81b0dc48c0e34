"""Command-line options shared by the `mechscope` sub-command modules."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

DeviceOpt = Annotated[Optional[str], typer.Option(help="where the model runs: cpu, cuda, cuda:N, mps "
                                                       "(default: the loader's)")]
