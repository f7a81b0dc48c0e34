"""Reports of saved artifacts: one self-contained HTML file, and notebook views (`notebook.py`).

Reads only the artifact directory (`mechscope.artifacts`); never imports analyses or models.
"""

from .html import render_report, write_report

__all__ = ["render_report", "write_report"]
