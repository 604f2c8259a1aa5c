"""Log lines as JSON: the fields a log pipeline indexes, from a call's extra and from
kopf's reference to the object it handles."""

import json
import logging

from kopfvirt import logformat


def _line(fmt: logging.Formatter, msg: str, *args, exc=None, **extra) -> str:
    record = logging.LogRecord("kopfvirt.agent", logging.WARNING, __file__, 1, msg, args, exc)
    record.__dict__.update(extra)
    return fmt.format(record)


def test_a_json_line_names_the_object_it_is_about():
    fmt = logformat.formatter("json", node="node-1")
    line = json.loads(_line(fmt, "VM %s/%s: %s -> %s", "team-a", "web", "Starting", "Running",
                            **logformat.about("team-a", "web", migration="web-move")))
    assert line["message"] == "VM team-a/web: Starting -> Running"
    assert {k: line[k] for k in ("level", "logger", "namespace", "name", "node", "migration")} == {
        "level": "warning", "logger": "kopfvirt.agent", "namespace": "team-a", "name": "web", "node": "node-1",
        "migration": "web-move"}
    assert line["time"].endswith("Z")


def test_kopfs_object_reference_gives_namespace_and_name():
    fmt = logformat.formatter("json")
    line = json.loads(_line(fmt, "Handler succeeded.", k8s_ref={"namespace": "ns", "name": "vm", "kind": "X"}))
    assert (line["namespace"], line["name"]) == ("ns", "vm") and "node" not in line


def test_an_exception_is_one_field_and_the_line_stays_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        text = _line(logformat.formatter("json"), "failed", exc=sys.exc_info())
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exception"]


def test_text_stays_the_default_format():
    assert _line(logformat.formatter("text"), "plain %s", "words").endswith("kopfvirt.agent WARNING plain words")


def test_a_logger_call_takes_about_as_its_extra():
    """A record's own attributes (name, ...) cannot be overwritten by an extra."""
    logger, lines = logging.getLogger("kopfvirt.test-logformat"), []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(logformat.formatter("json").format(record))
    logger.addHandler(handler)
    try:
        logger.warning("moving %s", "web", extra=logformat.about("ns", "web", migration="m1"))
    finally:
        logger.removeHandler(handler)
    assert {k: json.loads(lines[0])[k] for k in ("namespace", "name", "migration", "logger")} == {
        "namespace": "ns", "name": "web", "migration": "m1", "logger": "kopfvirt.test-logformat"}
