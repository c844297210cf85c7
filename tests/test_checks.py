"""lightning_sylv._checks: every check accepts its values and refuses others with a message that names
the argument and the value."""

import math

import pytest

from lightning_sylv import _checks as c

CASES = [
    (c.check_bool, {}, [True, False], [0, "yes", None]),
    (c.check_int, {}, [0, -3, 7], [True, 1.0, "1"]),
    (c.check_positive_int, {}, [1, 9], [0, -1, True, 2.0, None]),
    (c.check_positive_int, {"allow_none": True}, [None, 3], [0]),
    (c.check_positive_number, {}, [0.5, 3], [0, -1.0, math.inf, math.nan, True, "1"]),
    (c.check_positive_number, {"allow_inf": True}, [math.inf, 2], [0, math.nan]),
    (c.check_nonnegative_int, {}, [0, 4], [-1, False, 1.5]),
    (c.check_nonnegative_number, {}, [0, 0.0, 2.5], [-0.1, math.inf, math.nan, True]),
    (c.check_key, {}, [None, "pixel_values", 0, 2], ["", -1, 1.0]),
    (c.check_identifier, {}, ["logits"], ["", "not a name", None, 3]),
    (c.check_identifier, {"allow_none": True}, [None, "f"], ["1f"]),
    (c.check_patterns, {}, [["net.*"], ("a", "b.c")], ["net.*", [""], [1], None]),
]


@pytest.mark.parametrize(("check", "kwargs", "good", "bad"), CASES, ids=lambda v: getattr(v, "__name__", None))
def test_checks_accept_and_refuse(check, kwargs, good, bad):
    for value in good:
        check("arg", value, **kwargs)
    for value in bad:
        with pytest.raises(ValueError, match=r"^arg must be .*, got ") as err:
            check("arg", value, **kwargs)
        assert repr(value) in str(err.value)


def test_check_choice_lists_the_choices():
    c.check_choice("solver", "exact", ("exact", "randomized"))
    with pytest.raises(ValueError, match=r"solver must be one of \['exact', 'randomized'\], got 'fast'"):
        c.check_choice("solver", "fast", ("exact", "randomized"))


def test_is_int_excludes_bools():
    assert c.is_int(3) and not c.is_int(True) and not c.is_int(3.0)
