"""The run as files for machines: the versioned JSON document (``--json``, schema in
``docs/chaos.md``) and JUnit XML (``--junit``, one test case per scenario)."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree as ET

from .redact import Redactor
from .report import to_json
from .session import RunOutcome

__all__ = ["SCHEMA_VERSION", "document", "junit_xml", "render_json"]

#: Bumped on any change a consumer could notice (fields removed, renamed or retyped).
SCHEMA_VERSION = 2


def _iso(outcome: RunOutcome, which: str) -> str | None:
    value = getattr(outcome, which)
    return value.isoformat(timespec="milliseconds") if value is not None else None


def summary(outcome: RunOutcome) -> dict[str, int]:
    """How many scenarios ended in each status (every status present, zeros included)."""
    counts = dict.fromkeys(("passed", "failed", "error", "skipped", "interrupted"), 0)
    for result in outcome.results:
        counts[result.status] += 1
    counts["selected"] = len(outcome.plan.scenarios)
    counts["not_run"] = counts["selected"] - len(outcome.results)
    return counts


def document(outcome: RunOutcome, status: str, exit_code: int) -> dict[str, Any]:
    """The whole run as one JSON object (not yet scrubbed: see :func:`render_json`)."""
    plan = outcome.plan
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": plan.run_id,
        "seed": plan.seed,
        "started_at": _iso(outcome, "started_at"),
        "ended_at": _iso(outcome, "ended_at"),
        "status": status,
        "exit_code": exit_code,
        "setup_error": outcome.setup_error,
        "interrupted": outcome.interrupted,
        "versions": outcome.versions,
        "target": outcome.target,
        "options": {
            "scenarios": [s.name for s in plan.scenarios],
            "duration_s": plan.duration,
        },
        "summary": summary(outcome),
        "swept_keys": outcome.swept_keys,
        "scenarios": [to_json(r) for r in outcome.results],
    }


def render_json(doc: dict[str, Any], redactor: Redactor) -> str:
    """The document as JSON text, scrubbed of every secret of the run."""
    return redactor.scrub(json.dumps(doc, indent=2, allow_nan=False))


def junit_xml(outcome: RunOutcome, redactor: Redactor) -> str:
    """JUnit XML: one ``testsuite`` for the run, one ``testcase`` per selected scenario;
    violations become ``failure`` messages, errors ``error``, skips ``skipped``; scenarios
    not run because of Ctrl-C or a setup error are ``skipped`` with the reason."""
    suite = ET.Element("testsuite", name="chaos", timestamp=_iso(outcome, "started_at") or "")
    counts = summary(outcome)
    suite.set("tests", str(counts["selected"]))
    suite.set("failures", str(counts["failed"]))
    suite.set("errors", str(counts["error"]))
    suite.set("skipped", str(counts["skipped"] + counts["interrupted"] + counts["not_run"]))
    total = sum(r.seconds for r in outcome.results)
    suite.set("time", f"{total:.3f}")
    properties = ET.SubElement(suite, "properties")
    for name, value in (("run_id", outcome.plan.run_id), ("seed", str(outcome.plan.seed))):
        ET.SubElement(properties, "property", name=name, value=value)
    by_name = {r.scenario.name: r for r in outcome.results}
    for scenario in outcome.plan.scenarios:
        case = ET.SubElement(suite, "testcase", classname=f"chaos.{scenario.group}",
                             name=scenario.name)  # fmt: skip
        result = by_name.get(scenario.name)
        if result is None:
            why = outcome.setup_error or ("not run: interrupted" if outcome.interrupted else "")
            ET.SubElement(case, "skipped", message=why or "not run")
            continue
        case.set("time", f"{result.seconds:.3f}")
        if result.status == "failed":
            first = result.violations[0]
            failure = ET.SubElement(case, "failure", type=first.invariant,
                                    message=f"{len(result.violations)} violation(s): "
                                            f"{first.invariant}: {first.message}")  # fmt: skip
            failure.text = "\n".join(f"{v.invariant}: {v.message}" for v in result.violations)
        elif result.status == "error":
            ET.SubElement(case, "error", message=result.error or "error")
        elif result.status in ("skipped", "interrupted"):
            ET.SubElement(case, "skipped", message=result.skipped or "interrupted by Ctrl-C")
    ET.indent(suite)
    text = ET.tostring(suite, encoding="unicode", xml_declaration=True)
    return redactor.scrub(text) + "\n"
