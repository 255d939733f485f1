"""verl entry point (group ``verl.plugins``): loaded by every ``import verl``.

verl loads plugins from inside its own ``__init__`` and swallows their errors, so this module
stays cheap and imports nothing from verl. It installs a post-import hook: when verl's
``core_algos`` finishes importing, it imports ``verl_credit.integration.verl_registry``, which
registers a stub for each plugin estimator name; when ``verl.trainer.ppo.v1`` finishes importing,
it imports ``verl_credit.integration.trainer``, which registers the trainer mode ``credit``; after
``verl.utils.config``, ``verl_credit.integration.verl_hook``, which wraps verl's ``validate_config`` so
that ``python -m verl.trainer.main_ppo`` chooses the plugin trainer and runs verl_credit's checks in
the driver before Ray starts. Each of those modules registers at its own end, so importing one
directly works too. They therefore
exist in every process that can use them (driver, TaskRunner, Ray workers) and cost nothing
elsewhere. ``verl-credit doctor`` checks that this happened.
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import sys

logger = logging.getLogger(__name__)

# verl module whose import triggers the hook -> verl_credit module imported right after it
HOOKS = {
    "verl.utils.config": "verl_credit.integration.verl_hook",
    "verl.trainer.ppo.core_algos": "verl_credit.integration.verl_registry",
    "verl.trainer.ppo.v1": "verl_credit.integration.trainer",
}
_done: set[str] = set()


def _run_hook(module_name: str) -> None:
    if module_name in _done:
        return
    _done.add(module_name)
    try:
        importlib.import_module(HOOKS[module_name])
    except Exception:  # verl would swallow it anyway; make it visible
        logger.exception("verl_credit: hook after importing %s failed", module_name)
        raise


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of a hooked module so the hook runs after it."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in HOOKS or fullname in _done:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            _run_hook(fullname)

        loader.exec_module = exec_module  # the loader object belongs to this one spec
        return spec


def install() -> None:
    """Install the hook once; run it at once for hooked modules that are already imported."""
    if not any(isinstance(f, _AfterImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImportFinder())
    for name in HOOKS:
        if name in sys.modules and getattr(sys.modules[name], "__spec__", None) is not None:
            _run_hook(name)


install()
