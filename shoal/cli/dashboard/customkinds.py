"""Custom kinds in the page: one table per CustomResourceDefinition, as ``swctl get``.

The dashboard cannot know users' kinds in advance, so it follows the CRDs themselves
through their informer, as the runtime's ``KindResolver`` does for operators: a CRD
applied while the page is open adds its kind (an informer from the shared factory,
started at once, and a table in every open page); a changed CRD replaces it, so new
printer columns show; a deleted CRD removes it. Each object is shown with the cells
``swctl get KIND -A`` prints (``printers.TablePrinter``: the CRD's
``additionalPrinterColumns``), so the page and the command line agree.

A CRD that cannot be read is skipped with a warning (``kindsync.add_crd``), never fatal;
the built-in kinds are not CRDs in the store and have their own views.
"""

from __future__ import annotations

import asyncio
from typing import Final

from shoal.cli import printers
from shoal.cli.dashboard import hub, views
from shoal.crds import kinds, resource
from shoal.runtime import informer as rt_informer
from shoal.runtime import logging as rt_logging
from shoal.store import kindsync

log = rt_logging.get_logger("shoal.cli.dashboard.customkinds")

#: Page kinds of custom kinds are ``x:<plural>``, apart from the built-in ones.
PREFIX: Final = "x:"


def page_kind(info: kinds.KindInfo) -> str:
    return PREFIX + info.plural


class CustomKinds:
    """Keeps ``the_hub``'s custom kinds in step with the stored CRDs."""

    def __init__(self, factory: rt_informer.SharedInformerFactory, the_hub: hub.Hub,
                 registry: kinds.Registry) -> None:
        self.factory = factory
        self.hub = the_hub
        self.registry = registry
        self._by_crd: dict[str, kinds.KindInfo] = {}  # CRD name -> the kind it made
        self._informers: dict[str, rt_informer.Informer] = {}  # by page kind
        self._stopping: set[asyncio.Task[None]] = set()
        self._builtin = {info.kind for info in kinds.Registry.builtin().all()}
        crds = factory.informer(registry.lookup(kinds.CRD_KIND))
        self._remove = crds.add_handlers(self._on_crd, lambda _old, new: self._on_crd(new),
                                         self._on_deleted)

    def close(self) -> None:
        self._remove()

    def _on_crd(self, crd: resource.Resource) -> None:
        try:
            info = kinds.kind_info_from_crd(crd.to_dict())
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("not showing a CustomResourceDefinition that cannot be read",
                        key=crd.name, error=str(exc))
            return
        if info.kind in self._builtin:
            return
        old = self._by_crd.get(crd.name)
        if old is not None and old.plural != info.plural:
            self._drop(old)
        if kindsync.add_crd(self.registry, crd.to_dict()) is None:
            return
        kind = page_kind(info)
        informer = self.factory.informer(info)
        informer.start()  # new, or stopped when its CRD was deleted before
        self._informers[kind] = informer
        printer = printers.TablePrinter(info, all_namespaces=True)
        self._by_crd[crd.name] = info
        self.hub.custom[kind] = {"kind": info.kind, "plural": info.plural,
                                 "group": info.group, "headers": printer.headers}
        self.hub.add_kind(kind, informer, views.custom_view(printer))
        self.hub.publish_custom()

    def _on_deleted(self, crd: resource.Resource) -> None:
        info = self._by_crd.pop(crd.name, None)
        if info is not None:
            self._drop(info)

    def _drop(self, info: kinds.KindInfo) -> None:
        kind = page_kind(info)
        self.hub.remove_kind(kind)
        self.hub.custom.pop(kind, None)
        self.hub.publish_custom()
        informer = self._informers.pop(kind, None)
        if informer is not None:
            # Its watch ends; the factory's copy stays, resumed if the CRD comes back.
            task = asyncio.get_running_loop().create_task(informer.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
