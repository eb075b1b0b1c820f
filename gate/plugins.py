"""The plugin manager: which plugins load, and the components they supply.

Built-in plugins (``gate_plugins.*``) are registered by dotted name exactly as
third-party plugins are; those load from the ``gate`` entry-point group. Set
``GATE_LOAD_PLUGINS`` to a comma-separated list of entry-point names to load
only those (empty: none). A third-party plugin that fails to import is
reported by ``gate plugins`` and skipped; the rest still load.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from gate import __version__, hookspecs
from gate.components import Actuator, Component, Detector, Encoder, Matcher
from gate.errors import ConfigError

logger = logging.getLogger("gate.plugins")

ENTRY_POINT_GROUP = "gate"
BUILTIN_PLUGINS = (
    "gate_plugins.yunet",
    "gate_plugins.dlib_hog",
    "gate_plugins.dlib_encoder",
    "gate_plugins.dlib_torch",
    "gate_plugins.nearest",
    "gate_plugins.faiss_matcher",
    "gate_plugins.mqtt_actuator",
    "gate_plugins.log_actuator",
    "gate_plugins.homeassistant",
    "gate_plugins.osdp_reader",
    "gate_plugins.rules",
    "gate_plugins.liveness",
    "gate_plugins.training",
)
KINDS: dict[str, type[Component]] = {
    "detector": Detector,
    "encoder": Encoder,
    "matcher": Matcher,
    "actuator": Actuator,
}


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin (or one that failed to load) and where it came from."""

    name: str
    version: str
    source: str
    error: str | None = None


@dataclass(frozen=True)
class Registered:
    """A component class and the plugin that supplied it."""

    cls: type[Component]
    plugin: str


@dataclass
class Registry:
    """Every component the loaded plugins offer, by kind and name."""

    components: dict[str, dict[str, Registered]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )

    def add(self, kind: str, cls: type[Component], plugin: str) -> None:
        """Record ``cls``; a name registered twice is an error."""
        if not (isinstance(cls, type) and issubclass(cls, KINDS[kind])):
            raise TypeError(f"plugin {plugin} registered {cls!r}, which is not a {kind} class")
        if not cls.name:
            raise TypeError(f"plugin {plugin} registered {cls.__name__} without a name")
        known = self.components[kind]
        if cls.name in known:
            raise ValueError(
                f"{kind} {cls.name!r} is registered by both {known[cls.name].plugin} and {plugin}"
            )
        known[cls.name] = Registered(cls, plugin)

    def get(self, kind: str, name: str) -> Registered:
        """The component called ``name``; the error lists the known names."""
        try:
            return self.components[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.components[kind])) or "none"
            raise ConfigError(f"unknown {kind} {name!r} (known: {known})") from None

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        return sorted(self.components[kind])

    def __iter__(self) -> Iterator[tuple[str, Registered]]:
        for kind, known in self.components.items():
            for registered in known.values():
                yield kind, registered


class GatePluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering where each plugin came from."""

    def __init__(self) -> None:
        super().__init__("gate")
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registry: Registry | None = None

    def register_plugin(self, plugin: object, name: str, version: str, source: str) -> None:
        """Register ``plugin`` under ``name`` and remember its origin."""
        self.register(plugin, name=name)
        self.infos[name] = PluginInfo(name, version, source)
        self._registry = None

    def unregister(self, plugin: object = None, name: str | None = None) -> object | None:
        removed = super().unregister(plugin, name)
        self.infos = {n: i for n, i in self.infos.items() if self.has_plugin(n) or i.error}
        self._registry = None
        return removed

    @property
    def registry(self) -> Registry:
        """The components of every registered plugin (built on first use)."""
        if self._registry is None:
            self._registry = collect_components(self)
        return self._registry


def collect_components(pm: pluggy.PluginManager) -> Registry:
    """Ask each plugin, one at a time, for its components, so each is credited."""
    registry = Registry()
    for kind in KINDS:
        caller = getattr(pm.hook, f"register_{kind}s")
        for impl in reversed(caller.get_hookimpls()):

            def register(cls: type[Component], _kind: str = kind, _by: str = impl.plugin_name):
                registry.add(_kind, cls, _by)

            impl.function(register=register)
    return registry


def broadcast(caller: pluggy.HookCaller, **kwargs: object) -> None:
    """Call every implementation of a broadcast hook; one that raises is logged, not fatal."""
    for impl in reversed(caller.get_hookimpls()):
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception:
            logger.exception("plugin %s failed in %s", impl.plugin_name, caller.name)


def make_plugin_manager(entry_points: bool = True) -> GatePluginManager:
    """A fresh manager with the built-ins and, unless told not to, entry-point plugins."""
    pm = GatePluginManager()
    for dotted in BUILTIN_PLUGINS:
        pm.register_plugin(importlib.import_module(dotted), dotted, __version__, "built-in")
    if entry_points:
        _load_entry_points(pm)
    pm.check_pending()
    return pm


def _load_entry_points(pm: GatePluginManager) -> None:
    wanted = os.environ.get("GATE_LOAD_PLUGINS")
    allowed = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        try:
            plugin = ep.load()
            pm.register_plugin(plugin, ep.name, version, dist)
        except Exception as exc:  # a broken plugin must not take the others down
            pm.infos[ep.name] = PluginInfo(
                ep.name, version, dist, error=f"{type(exc).__name__}: {exc}"
            )


_default: GatePluginManager | None = None


def plugin_manager() -> GatePluginManager:
    """The process-wide manager, built on first use."""
    global _default
    if _default is None:
        _default = make_plugin_manager()
    return _default
