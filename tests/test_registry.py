import pytest

from xtok.registry import ALL_REGISTRIES, INIT_METHODS, MethodSpec, Registry, check_methods


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


EXPECTED = {
    "init methods": {"zero", "mean", "randn", "subword", "focus", "omp", "subword-prior", "tokalign", "tokalign+omp"},
    "losses": {"forward_kl", "reverse_kl", "jsd", "ce", "uld", "alm"},
    "drafter backends": {"hf", "vllm"},
    "ensemble modes": {"prob", "logprob"},
    "co-occurrence embeddings": {"ppmi-svd", "glove"},
}


def test_project_registries_load_every_module_that_fills_them():
    """Each registry imports its modules on first use: every entry a user can name is there, callable, with a help line."""
    assert set(ALL_REGISTRIES) == set(EXPECTED)
    for title, reg in ALL_REGISTRIES.items():
        assert set(reg.names()) == EXPECTED[title], title
        for name in reg.names():
            assert callable(reg.get(name)) and reg.help(name).strip(), (title, name)


def test_init_methods_carry_a_typed_spec():
    assert all(isinstance(INIT_METHODS.spec(m), MethodSpec) for m in INIT_METHODS.names())
    assert INIT_METHODS.spec("omp") == MethodSpec(needs_donor=True, uses_k=True, rowwise=True)
    assert INIT_METHODS.spec("subword-prior") == MethodSpec(needs_calibration=True, head_only=True)
    assert INIT_METHODS.spec("tokalign") == MethodSpec(needs_alignment=True)
    assert INIT_METHODS.spec("subword") == MethodSpec(rowwise=True)
    reg = Registry("widget", spec_type=MethodSpec)
    with pytest.raises(TypeError, match="spec=MethodSpec"):
        reg.register("x", needs_donor=True)  # untyped metadata is refused
    with pytest.raises(TypeError, match="spec=MethodSpec"):
        reg.register("x", spec={"needs_donor": True})
    reg.register("x")(lambda: 0)
    assert reg.spec("x") == MethodSpec()
    with pytest.raises(TypeError, match="typed spec"):
        reg.meta("x")


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="subword-prior"), "--head-method subword-prior"),
    (dict(method="omp", teacher_model=False), "needs the teacher's embeddings"),
    (dict(method="subword", head_method="focus", teacher_model=False), "init method 'focus' needs the teacher's"),
    (dict(method="tokalign"), "needs a token alignment"),
    (dict(method="subword", head_method="subword-prior", teacher_model=False), "pass --alignment DIR"),
    (dict(method="tokalign", alignment=True, fallback="tokalign+omp"), r"fallback 'tokalign\+omp'"),
    (dict(method="tokalign", alignment=True, fallback="subword-prior"), "fallback 'subword-prior' builds output-head"),
    (dict(method="tokalign", alignment=True, fallback="omp", teacher_model=False), "init method 'omp' needs the teacher"),
    (dict(method="telepathy"), "unknown init method 'telepathy'; known: focus"),
])
def test_check_methods_refuses_what_cannot_run(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_methods(**kwargs)


def test_check_methods_says_what_a_transplant_needs():
    n = check_methods("omp", "subword-prior")
    assert (n.teacher_model, n.alignment, n.calibration, n.uses_k) == (True, False, True, True)
    n = check_methods("tokalign", "subword-prior", teacher_model=False, alignment=True, fallback="subword")
    assert (n.teacher_model, n.alignment, n.calibration, n.uses_k) == (False, True, True, False)  # prior from the counts
    assert check_methods("tokalign", alignment=True, fallback="omp").teacher_model  # the fallback needs the donor
    assert not check_methods("omp", "subword-prior", alignment=True, fallback="omp").alignment
    assert not check_methods("subword", "mean", teacher_model=False).teacher_model


def test_configs_are_checked_by_the_same_function():
    """A choice of methods that cannot run fails when the config is validated, before any model is loaded."""
    from xtok.configfile import config_from_dict

    base = {"recipe": "transplant", "student": "a", "teacher": "b"}
    with pytest.raises(ValueError, match="needs the teacher's embeddings"):
        config_from_dict({**base, "teacher_tokenizer_only": True})
    with pytest.raises(ValueError, match="pass --alignment DIR"):
        config_from_dict({**base, "teacher_tokenizer_only": True, "method": "subword"})
    config_from_dict({**base, "teacher_tokenizer_only": True, "method": "subword", "alignment": "dir"})
    with pytest.raises(ValueError, match="--head-method subword-prior"):
        config_from_dict({"recipe": "align", "source": "a", "target": "b", "method": "subword-prior"})
    with pytest.raises(ValueError, match="fallback 'tokalign'"):
        config_from_dict({"recipe": "align", "source": "a", "target": "b", "fallback": "tokalign"})
