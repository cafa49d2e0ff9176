"""The version table and the drift report, without servers: a listed change applies from its
release on and only to its rows, and drift is reported one line per row."""

from __future__ import annotations

from packaging.version import Version

from .harness import DIFFERENCES, MESSAGE_DIFFERENCES, Drift, drift_summary
from .redispy_versions import CHANGES, MESSAGE_RULE_RANGES, change_for, message_rule_holds


def test_a_change_applies_from_its_release_on_and_only_to_its_rows() -> None:
    assert change_for("server:script_kill()", "keyless-default-node", Version("8.2.0"))
    assert change_for("server:script_kill()", "keyless-default-node", Version("9.0"))
    assert change_for("server:script_kill()", "keyless-default-node", Version("8.1.0")) is None
    assert change_for("server:echo('hi')", "keyless-default-node", Version("8.2.0")) is None
    assert change_for("server:script_kill()", "whole-keyspace", Version("8.2.0")) is None


def test_every_change_and_rule_names_a_listed_difference() -> None:
    for change in CHANGES:
        assert change.reason in DIFFERENCES and change.cases and change.why
        Version(change.since)
    assert set(MESSAGE_RULE_RANGES) <= set(MESSAGE_DIFFERENCES)


def test_message_rules_hold_only_in_their_range() -> None:
    assert message_rule_holds("data-error-message", Version("8.1.0"))
    assert not message_rule_holds("data-error-message", Version("8.2.0"))
    assert message_rule_holds("data-error-argument", Version("8.2.0"))
    assert not message_rule_holds("data-error-argument", Version("8.0.0"))
    assert message_rule_holds("error-code-kept", Version("8.0.0"))  # no range: always


def test_drift_is_one_line_per_row_with_its_targets() -> None:
    drift = [
        Drift("now agrees", "server:script_kill()", target, "(listed difference)")
        for target in ("cluster", "cluster-resp3")
    ] + [Drift("message changed", "strings:set(K.a, None)", "standalone", "'a' / 'b'")]
    assert drift_summary(drift) == [
        "now agrees: server:script_kill() [cluster, cluster-resp3] (listed difference)",
        "message changed: strings:set(K.a, None) [standalone] 'a' / 'b'",
    ]
