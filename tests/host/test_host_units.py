"""Pure parts of the local host: NCRONTAB schedules, %SETTING% resolution, host.json and timespans."""

from __future__ import annotations

import datetime as dt

import pytest

from devhost.ncrontab import NcrontabError, parse
from devhost.settings import QueueOptions, SettingNotFound, load_host_json, parse_timespan, resolve, route_prefix


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * * *", "2026-03-04T12:03:10.500", "2026-03-04T12:03:11"),
        ("0 */5 * * * *", "2026-03-04T12:03:10", "2026-03-04T12:05:00"),
        ("0 */5 * * * *", "2026-03-04T12:05:00", "2026-03-04T12:10:00"),  # strictly after
        ("0 0 * * * *", "2026-12-31T23:59:59", "2027-01-01T00:00:00"),
        ("0 30 9 * * 1-5", "2026-03-07T10:00:00", "2026-03-09T09:30:00"),  # Saturday -> Monday
        ("0 30 9 * Jan Mon", "2026-02-01T00:00:00", "2027-01-04T09:30:00"),
        ("0 0 9-17/4 * * *", "2026-03-04T09:00:00", "2026-03-04T13:00:00"),
        ("0 0 7,18 * * *", "2026-03-04T08:00:00", "2026-03-04T18:00:00"),
        ("*/15 * * * * *", "2026-03-04T12:00:44", "2026-03-04T12:00:45"),
        ("10/20 * * * * *", "2026-03-04T12:00:31", "2026-03-04T12:00:50"),
        ("0 0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),
        ("0 0 0 * * 0", "2026-03-04T00:00:00", "2026-03-08T00:00:00"),  # Sunday = 0
        ("0 0 0 * * sat", "2026-03-04T00:00:00", "2026-03-07T00:00:00"),
        ("0 0 0 13 * FRI", "2026-01-01T00:00:00", "2026-02-13T00:00:00"),  # day AND day-of-week
    ],
)
def test_next_occurrence(expression: str, after: str, expected: str) -> None:
    assert parse(expression).next_after(at(after)) == at(expected)


def test_naive_datetimes_are_utc_and_result_is_utc() -> None:
    result = parse("0 0 12 * * *").next_after(dt.datetime(2026, 3, 4, 11, 0))
    assert result == at("2026-03-04T12:00:00") and result.tzinfo == dt.UTC


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 */5 * * *", "expected 6 fields (second minute hour day month day-of-week), got 5"),
        ("", "empty expression"),
        ("60 * * * * *", "in the second field: 60 is out of range 0-59"),
        ("* * 24 * * *", "in the hour field: 24 is out of range 0-23"),
        ("* * * 0 * *", "in the day field: 0 is out of range 1-31"),
        ("* * * * 13 *", "in the month field: 13 is out of range 1-12"),
        ("* * * * * 7", "in the day-of-week field: 7 is out of range 0-6"),
        ("*/0 * * * * *", "step '0' must be a positive integer"),
        ("* 5-1 * * * *", "range '5-1' runs backwards"),
        ("* * * * Foo *", "'Foo' is not a number or name"),
        ("* x * * * *", "'x' is not a number"),
        ("* 1,,2 * * * *", "empty list item"),
        ("0 0 0 31 2 *", "the day field never occurs in the selected months"),
    ],
)
def test_invalid_expressions_have_clear_errors(expression: str, message: str) -> None:
    with pytest.raises(NcrontabError) as raised:
        parse(expression)
    assert message in str(raised.value)
    assert repr(expression) in str(raised.value)


def test_setting_resolution() -> None:
    settings = {"TOY_SCHEDULE": "0 */5 * * * *", "ENV": "dev"}
    assert resolve("%TOY_SCHEDULE%", settings, "x") == "0 */5 * * * *"
    assert resolve("jobs-%ENV%", settings, "x") == "jobs-dev"
    assert resolve("plain", settings, "x") == "plain"
    assert resolve(True, settings, "x") is True
    with pytest.raises(SettingNotFound) as raised:
        resolve("%MISSING%", settings, "function 'tick' schedule")
    assert str(raised.value) == (
        "app setting 'MISSING' (used by function 'tick' schedule) is not defined; add it to local.settings.json Values"
    )
    assert parse(resolve("%TOY_SCHEDULE%", settings, "x")).next_after(at("2026-01-01T00:00:01")) == at(
        "2026-01-01T00:05:00"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00:02", 2.0), ("00:01:00", 60.0), ("00:00:00.200", 0.2), ("1.00:00:00", 86400.0), (5, 5.0)],
)
def test_timespans(text: object, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


def test_bad_timespan() -> None:
    with pytest.raises(ValueError, match="not a timespan"):
        parse_timespan("2 seconds", "visibilityTimeout")


def test_queue_options_defaults_and_project_host_json() -> None:
    assert QueueOptions.from_host_config({}) == QueueOptions()
    assert QueueOptions().max_concurrency == 24  # batchSize + newBatchThreshold (docs/reference/azure.md §1.3)
    config = load_host_json("host.json", {})
    options = QueueOptions.from_host_config(config)
    assert (options.max_dequeue_count, options.batch_size, options.message_encoding) == (5, 16, "base64")
    assert route_prefix(config) == "api"


def test_host_json_overrides_and_validation() -> None:
    config = load_host_json(
        {"extensions": {"queues": {"maxDequeueCount": 5}}},
        {"AzureFunctionsJobHost__extensions__queues__maxdequeuecount": "2",
         "AzureFunctionsJobHost__extensions__http__routePrefix": "/v1/"},
    )
    assert config["extensions"]["queues"] == {"maxDequeueCount": "2"}
    assert QueueOptions.from_host_config(config).max_dequeue_count == 2
    assert route_prefix(config) == "v1"
    with pytest.raises(ValueError, match="messageEncoding"):
        QueueOptions.from_host_config({"extensions": {"queues": {"messageEncoding": "utf8"}}})
    with pytest.raises(ValueError, match="batchSize"):
        QueueOptions.from_host_config({"extensions": {"queues": {"batchSize": 64}}})


def test_singleton_options_follow_webjobs_defaults_and_limits() -> None:
    from devhost.locks import SingletonOptions, lock_blob_name, valid_host_id

    assert SingletonOptions.from_host_config({}) == SingletonOptions(60.0, 60.0)
    config = load_host_json({"singleton": {"listenerLockPeriod": "00:00:15"}},
                            {"AzureFunctionsJobHost__singleton__listenerLockRecoveryPollingInterval": "00:00:20"})
    assert SingletonOptions.from_host_config(config) == SingletonOptions(15.0, 20.0)
    for bad in ({"listenerLockPeriod": "00:00:14"}, {"listenerLockPeriod": "00:01:01"},
                {"listenerLockRecoveryPollingInterval": "00:00:05"}):
        with pytest.raises(ValueError, match="singleton"):
            SingletonOptions.from_host_config({"singleton": bad})
    assert lock_blob_name("app-1", "salesforce_cdc_pull") == "locks/app-1/Host.Functions.salesforce_cdc_pull.Listener"
    assert valid_host_id("Soak1234") == "soak1234"
    with pytest.raises(ValueError):
        valid_host_id("-bad-")
    with pytest.raises(ValueError):
        valid_host_id("x" * 33)
