"""Runs a plan of SQL statements on current ClickHouse, embedded by chDB.

Read from stdin: a JSON list of {"name": ..., "sql": ...}. Written to
stdout: a JSON list of {"name": ..., "ok": bool, "output": TSV with names,
or "error": the message}, one per statement, in order. Used by
tests/tests/clickhouse_current.rs, which sends the same plan to the
ClickHouse 18.16 server and compares.
"""
import json
import sys

from chdb import session

plan = json.load(sys.stdin)
s = session.Session()
s.query("CREATE DATABASE IF NOT EXISTS tally")
s.query("USE tally")
out = []
for step in plan:
    try:
        result = s.query(step["sql"], "TabSeparatedWithNames")
        out.append({"name": step["name"], "ok": True, "output": str(result)})
    except Exception as error:  # the message goes to the test
        out.append({"name": step["name"], "ok": False, "error": str(error)[:2000]})
json.dump(out, sys.stdout)
