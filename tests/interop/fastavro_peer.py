"""An independent Avro peer for tally's wire format, built on fastavro.

tally writes Avro single-object encoding: C3 01, the 8-byte CRC-64-AVRO
fingerprint of the writer schema's canonical form (little-endian), then the
Avro binary datum. This script is the other side of that contract, written
against fastavro rather than the Rust apache-avro crate tally uses, so the
interop test (tests/tests/avro_interop.rs) checks the format, not one
library against itself. It doubles as the reference for a Python AI worker
that publishes to tally.

    fastavro_peer.py decode SCHEMA_DIR < hex lines
        For each message (hex, one per line), print one JSON line:
        {"schema", "version", "fingerprint", "record", "reencoded"}.
        The writer schema is found by fingerprint among SCHEMA_DIR/*.avsc
        ("current") and SCHEMA_DIR/previous/*.avsc ("previous"); "record" is
        the datum with bytes as hex and timestamps as epoch milliseconds;
        "reencoded" is fastavro's own single-object encoding of that datum.

    fastavro_peer.py encode SCHEMA_FILE < JSON lines
        Each line is a record in the same JSON form; fields the schema does
        not have are dropped. Print one JSON line {"hex", "dropped"}.

    fastavro_peer.py event-id < JSON lines
        Each line is [job_id, service, engine]; print the usage event id a
        worker derives for it (UUID v5 in tally's namespace over the three
        parts joined by NUL), the same as tally_client::event_id.

Exit status 1 with a message on stderr for a message it cannot read.
"""

import datetime
import glob
import io
import json
import os
import sys
import uuid

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
# tally_client's EVENT_NAMESPACE: never changes, or retries stop deduplicating.
EVENT_NAMESPACE = uuid.UUID("6f1c2d4e-9a3b-4c5d-8e7f-1a2b3c4d5e6f")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def load(path):
    with open(path, encoding="utf-8") as f:
        schema = parse_schema(json.load(f))
    fp = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    return schema, bytes.fromhex(fp)


def to_json(value):
    """The datum as plain JSON: bytes as hex, timestamps as epoch ms."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(milliseconds=1)
    return value


def from_json(value, schema):
    """The inverse of to_json for the types tally's schemas use."""
    if isinstance(schema, list):  # a union: the first branch that takes it
        for branch in schema:
            if value is None and branch == "null":
                return None
            if value is not None and branch != "null":
                return from_json(value, branch)
        raise ValueError(f"no union branch for {value!r}")
    if isinstance(schema, dict):
        kind = schema["type"]
        if kind == "record":
            return {f["name"]: from_json(value[f["name"]], f["type"]) for f in schema["fields"] if f["name"] in value}
        if kind == "array":
            return [from_json(v, schema["items"]) for v in value]
        if kind == "map":
            return {k: from_json(v, schema["values"]) for k, v in value.items()}
        if kind == "enum":
            return value
        if kind == "bytes":
            return bytes.fromhex(value)
        # A primitive with a logical type: timestamp-millis takes epoch ms.
        return value
    if schema == "bytes":
        return bytes.fromhex(value)
    return value


def decode(schema_dir):
    writers = {}
    for version, pattern in (("current", "*.avsc"), ("previous", "previous/*.avsc")):
        for path in sorted(glob.glob(os.path.join(schema_dir, pattern))):
            schema, fp = load(path)
            writers[fp] = (schema, version)
    for n, line in enumerate(sys.stdin, 1):
        message = bytes.fromhex(line.strip())
        if message[:2] != MAGIC:
            sys.exit(f"message {n}: no single-object header (starts {message[:2].hex()})")
        fp = message[2:10]
        if fp not in writers:
            sys.exit(f"message {n}: fingerprint {fp.hex()} matches no schema in {schema_dir}")
        schema, version = writers[fp]
        body = io.BytesIO(message[10:])
        record = schemaless_reader(body, schema)
        if body.tell() != len(message) - 10:
            sys.exit(f"message {n}: {len(message) - 10 - body.tell()} bytes left after the datum")
        out = io.BytesIO()
        schemaless_writer(out, schema, record)
        print(json.dumps({
            "schema": schema["name"],
            "version": version,
            "fingerprint": fp.hex(),
            "record": to_json(record),
            "reencoded": (MAGIC + fp + out.getvalue()).hex(),
        }))


def dropped_fields(value, schema, path=""):
    """Fields of value that schema lacks, at any depth (records in records
    and arrays), as dotted paths (from_json leaves them out)."""
    found = set()
    if isinstance(schema, dict) and schema.get("type") == "record" and isinstance(value, dict):
        fields = {f["name"]: f["type"] for f in schema["fields"]}
        for name, inner in value.items():
            at = f"{path}.{name}" if path else name
            if name in fields:
                found |= dropped_fields(inner, fields[name], at)
            else:
                found.add(at)
    elif isinstance(schema, dict) and schema.get("type") == "array" and isinstance(value, list):
        for item in value:
            found |= dropped_fields(item, schema["items"], path)
    return found


def encode(schema_file):
    schema, fp = load(schema_file)
    for line in sys.stdin:
        value = json.loads(line)
        dropped = sorted(dropped_fields(value, schema))
        record = from_json(value, schema)
        out = io.BytesIO()
        schemaless_writer(out, schema, record)
        print(json.dumps({"hex": (MAGIC + fp + out.getvalue()).hex(), "dropped": dropped}))


def event_ids():
    for line in sys.stdin:
        job_id, service, engine = json.loads(line)
        print(json.dumps(str(uuid.uuid5(EVENT_NAMESPACE, "\0".join([job_id, service, engine])))))


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "event-id":
        event_ids()
    elif len(sys.argv) == 3 and sys.argv[1] in ("decode", "encode"):
        (decode if sys.argv[1] == "decode" else encode)(sys.argv[2])
    else:
        sys.exit(__doc__)
