"""Equinox's abstract/final pattern across mdflow's own class hierarchies (flows, the dual flow, mirror
maps, models, losses, Jacobians and factors, Rosenbrock solvers: every class of every mdflow module).

Every method or property is either abstract or concrete and never overridden below the class that
defines it; a class with subclasses is abstract (named `Abstract*`, or `_Abstract*` if private). What
differs between subclasses is data (class variables, fields, `AbstractVar`s) or an abstract method
implemented once. `__check_init__` and dunder methods are exempt, as in equinox.
"""

import importlib
import inspect
import pkgutil

import pytest

import mdflow

# (class qualname, attribute) -> why it may override a concrete base member. Empty: every mdflow
# hierarchy follows the pattern; an entry here must say why it cannot.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _mdflow_classes() -> list[type]:
    classes = set()
    for info in pkgutil.walk_packages(mdflow.__path__, "mdflow."):
        module = importlib.import_module(info.name)
        classes.update(c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__)
    return sorted(classes, key=lambda c: (c.__module__, c.__qualname__))


CLASSES = _mdflow_classes()


def _is_behaviour(value) -> bool:
    """A method or property (not data such as a class variable's value)."""
    if inspect.isclass(value):
        return False
    return callable(value) or isinstance(value, (property, classmethod, staticmethod))


def _is_abstract_member(value) -> bool:
    value = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
    return bool(getattr(value, "__isabstractmethod__", False))


def _overrides(cls: type) -> list[str]:
    """`cls`'s own methods and properties that override a concrete one of an mdflow base class."""
    found = []
    for name, value in vars(cls).items():
        if (name.startswith("__") and name.endswith("__")) or name == "__check_init__" or not _is_behaviour(value):
            continue
        for base in cls.__mro__[1:]:
            if base in CLASSES and name in vars(base):
                member = vars(base)[name]
                if _is_behaviour(member) and not _is_abstract_member(member):
                    if (cls.__qualname__, name) not in EXCEPTIONS:
                        found.append(f"{cls.__module__}.{cls.__qualname__}.{name} overrides "
                                     f"{base.__module__}.{base.__qualname__}.{name}")
                break
    return found


def test_the_walk_sees_the_hierarchies():
    """The walk reaches every hierarchy named above (a walk that found nothing would pass vacuously)."""
    names = {c.__qualname__ for c in CLASSES}
    for name in ("AbstractFlow", "AbstractPrimalFlow", "AbstractEMAFlow", "AbstractSignDescent", "SSD", "DualFlow",
                 "AbstractMirrorMap", "Hypentropy", "AbstractModel", "Diagonal", "AbstractLoss", "LogisticLoss",
                 "AbstractJacobian", "AbstractFactor", "AbstractRosenbrock", "Rodas4"):
        assert name in names, name


def test_no_concrete_member_is_overridden():
    """No subclass in mdflow overrides a concrete method or property of an mdflow base class."""
    found = [line for cls in CLASSES for line in _overrides(cls)]
    assert not found, "\n".join(found)


def test_classes_are_abstract_or_final():
    """A class that mdflow subclasses is abstract: named `Abstract*` (equinox's convention)."""
    subclassed = {base for cls in CLASSES for base in cls.__mro__[1:] if base in CLASSES}
    bad = [f"{c.__module__}.{c.__qualname__}" for c in subclassed if not c.__name__.lstrip("_").startswith("Abstract")]
    assert not bad, f"concrete classes with subclasses: {bad}"


def test_the_check_fails_on_an_override():
    """The check is able to fail: a subclass overriding a concrete method of a flow is reported."""

    class Overriding(mdflow.GF):
        def params(self):
            return {}

    assert _overrides(Overriding) == [f"{__name__}.{Overriding.__qualname__}.params overrides "
                                      f"mdflow._flows.AbstractPrimalFlow.params"]


@pytest.mark.parametrize("name", ["exact_dual", "moments", "has_discrete", "time_options"])
def test_data_may_differ(name):
    """Class variables are data, not behaviour: subclasses set them (here on the built-in flows)."""
    assert not _is_behaviour(getattr(mdflow.AbstractPrimalFlow, name))
