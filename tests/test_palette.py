import pytest

import gmlib
from gmlib.book import palette


def test_every_criterion_and_policy_has_its_own_colour():
    names = [*gmlib.CRITERIA, *gmlib.planning.POLICIES, "unpruned"]
    book = palette.colours(names)
    assert list(book) == names and len(set(book.values())) == len(names)


def test_an_unknown_name_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="'magnitude'"):
        palette.colours(["fpgm", "magnitude"])
