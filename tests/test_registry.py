import pytest

from xtok.registry import ALL_REGISTRIES, Registry


def test_register_get_and_names():
    reg = Registry("widget")

    @reg.register("b", help="the b one")
    def b():
        return 2

    @reg.register("a")
    def a():
        """First line of a.

        More."""
        return 1

    assert reg.names() == ["a", "b"]
    assert reg.get("b")() == 2
    assert reg.help("a") == "First line of a."
    assert "a" in reg and "c" not in reg


def test_unknown_name_lists_known():
    reg = Registry("widget")
    reg.register("x")(lambda: 0)
    with pytest.raises(ValueError, match=r"unknown widget 'y'; known: x"):
        reg.get("y")


def test_duplicate_name_refused():
    reg = Registry("widget")
    reg.register("x")(lambda: 0)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("x")(lambda: 1)


def test_project_registries_load():
    for reg in ALL_REGISTRIES.values():
        assert isinstance(reg.names(), list)
