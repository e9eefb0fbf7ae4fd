"""SF_SOQL_FILTER checked locally (``soql.check_filter``): one WHERE condition, or a ConfigError naming the setting."""

from __future__ import annotations

import pytest

from sync.adapters.salesforce.soql import check_filter
from sync.config import ConfigError


@pytest.mark.parametrize("text", [
    "RecordType.Name = 'Customer'",
    "Email != null AND Account.Type = 'Customer'",
    "(Department = 'Sales' OR Department = 'Support') AND Email != null",
    "LastName LIKE 'O\\'Brien%'",  # an escaped quote inside a string
    "Description != 'limit; order by (x'",  # keywords, ';' and '(' inside a string are text
    "Region__c IN ('EMEA', 'APAC')",
])
def test_a_where_condition_is_kept_as_it_is(text: str) -> None:
    assert check_filter(f"  {text} ") == text


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_an_empty_filter_is_no_filter(empty: str | None) -> None:
    assert check_filter(empty) is None


@pytest.mark.parametrize(("text", "why"), [
    ("Email != null; DELETE", "';'"),
    ("Email != null LIMIT 10", "'LIMIT'"),
    ("Email != null ORDER BY Name", "'ORDER'"),
    ("Email != null GROUP BY AccountId", "'GROUP'"),
    ("WHERE Email != null", "'WHERE'"),
    ("AccountId IN (SELECT Id FROM Account)", "'SELECT'"),
    ("Email != null) OR (Id != null", "')' has no matching"),
    ("(Email != null", "'(' is not closed"),
    ("Name = 'O'Brien'", "quote"),
    ("Name = 'open", "quote"),
    ('Name = "Ann"', "single quotes"),
    ("OwnerId = :owner", "bind"),
    ("Email != null FOR UPDATE", "'FOR'"),
])
def test_what_cannot_be_one_where_condition_is_refused_naming_the_setting(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_filter(text)
    assert "SF_SOQL_FILTER" in str(e.value) and why in str(e.value)
