"""Outlook's free-text countries and states as the ISO codes of State and Country/Territory Picklists
(sync/addresses.py, docs/reference/salesforce.md §1.4)."""

from __future__ import annotations

import pytest

from sync.addresses import country_code, state_code


@pytest.mark.parametrize(("text", "code"), [
    ("USA", "US"), ("U.S.A.", "US"), ("United States", "US"), ("united states of america", "US"),
    ("Deutschland", "DE"), ("DE", "DE"), ("deu", "DE"), ("Allemagne", "DE"), ("Federal Republic of Germany", "DE"),
    ("UK", "GB"), ("United Kingdom", "GB"), ("Vereinigtes Königreich", "GB"), ("日本", "JP"), ("Japon", "JP"),
    ("  México ", "MX"), ("Mexico", "MX"), ("Bolivia", "BO"), ("Côte d'Ivoire", "CI"),
])
def test_country_aliases(text: str, code: str) -> None:
    assert country_code(text) == code


@pytest.mark.parametrize("text", ["Atlantis", "", "   ", None, "U", "America del Norte"])
def test_text_that_names_no_country(text: str | None) -> None:
    assert country_code(text) is None


def test_the_orgs_own_integration_value_wins() -> None:
    assert country_code("Amerika", {"US": "Amerika", "DE": "Germany"}) == "US"
    assert country_code("Germany", {"US": "Amerika", "DE": "Germany"}) == "DE"


@pytest.mark.parametrize(("country", "text", "code"), [
    ("US", "Calif.", "CA"), ("US", "CA", "CA"), ("US", "california", "CA"), ("US", "N.Y.", "NY"),
    ("US", "Mass.", "MA"), ("CA", "Ontario", "ON"), ("CA", "Qué.", "QC"), ("AU", "NSW", "NSW"),
    ("AU", "New South Wales", "NSW"), ("IT", "Milano", "MI"), ("BR", "São Paulo", "SP"),
])
def test_state_aliases(country: str, text: str, code: str) -> None:
    assert state_code(country, text) == code


@pytest.mark.parametrize(("country", "text"), [("US", "Miss."), ("US", "Narnia"), ("US", "New"), ("US", "")])
def test_ambiguous_or_unknown_states_are_not_guessed(country: str, text: str) -> None:
    assert state_code(country, text) is None  # "Miss.": Mississippi or Missouri; "New": four states


def test_states_are_the_orgs_when_it_lists_them() -> None:
    assert state_code("DE", "Bayern", {}) is None  # the org has no German states
    assert state_code("JP", "Tokyo", {"13": "Tokyo"}) == "13"
