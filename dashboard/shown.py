"""The runs a page draws: the run picked in the sidebar and the runs compared with it
(``COMPARE_KEY``), as one value the frame (``dashboard/frame.py``) hands to a page's body and
the figure cache (``dashboard/figure_cache.py``) keys its figures by."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from dashboard import charts, data


@dataclass(frozen=True, kw_only=True)
class Shown:
    """The runs a page draws, each as its current row (``data.run_info``): ``main``, the run
    picked in the sidebar, and ``others``, the runs compared with it in the order picked.
    That order (``names``) gives each run its colour, the same on every chart and page."""

    path: str  # the run store
    main: dict
    others: tuple[dict, ...] = ()

    @property
    def infos(self) -> tuple[dict, ...]:
        return (self.main, *self.others)

    @property
    def names(self) -> list[str]:
        return [info["name"] for info in self.infos]

    @property
    def comparing(self) -> bool:
        return bool(self.others)

    @property
    def colours(self) -> dict[str, str]:
        return charts.run_colours(self.names)

    def scalars(self) -> dict[str, pd.DataFrame]:
        """Every shown run's scalars (``data.live_scalars``: only new steps are read, and only
        of a run that trains), by run name, in the order shown."""
        return {info["name"]: data.live_scalars(self.path, info) for info in self.infos}
