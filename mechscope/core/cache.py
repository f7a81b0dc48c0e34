"""Cache: an immutable mapping Site -> tensor holding only the sites that were asked for."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from .errors import SiteError
from .site import Site


class Cache(Mapping[Site, torch.Tensor]):
    """Activations (or gradients) captured during one run, keyed by Site.

    Lookup accepts a Site or any name `Site.parse` understands. A head-restricted Site returns
    that head's slice of the whole-site tensor when only the whole site was captured.

    Example::

        res = ms.run(model, tokens, capture=["attn.z.3", "resid_post.3"])
        res.cache["attn.z.3"]                    # (batch, pos, head, d_head)
        res.cache["blocks.3.attn.hook_z[5]"]     # head 5 only, (batch, pos, d_head)
        res.cache.nbytes                         # memory held by the captures
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[Site, torch.Tensor] | None = None):
        self._data: dict[Site, torch.Tensor] = dict(data or {})

    def _site(self, key: Site | str) -> Site:
        if isinstance(key, str):
            module = Site.module(key.strip())  # a generic model's sites are module paths
            return module if module in self._data else Site.parse(key)
        return key

    def __getitem__(self, key: Site | str) -> torch.Tensor:
        site = self._site(key)
        if site in self._data:
            return self._data[site]
        if site.head is not None and site.whole in self._data:
            return self._data[site.whole].select(site.whole.layout.head, site.head)
        raise SiteError(f"{site.name} was not captured; captured sites: "
                        + (", ".join(s.name for s in self._data) or "none"))

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            try:
                key = self._site(key)
            except SiteError:  # `in` answers False for any name that was not captured
                return False
        return key in self._data or (isinstance(key, Site) and key.head is not None
                                     and key.whole in self._data)

    def __iter__(self) -> Iterator[Site]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes held by the distinct storages behind the cached tensors."""
        seen: dict[int, int] = {}
        for t in self._data.values():
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return sum(seen.values())

    def to(self, device: torch.device | str) -> "Cache":
        """A copy of the cache with every tensor moved to `device`."""
        return Cache({s: t.to(device) for s, t in self._data.items()})

    def __repr__(self) -> str:
        rows = ", ".join(f"{s.short}: {tuple(t.shape)}" for s, t in self._data.items())
        return f"Cache({rows})"

    def _repr_html_(self) -> str:
        from .html import cache_html

        return cache_html(self)
