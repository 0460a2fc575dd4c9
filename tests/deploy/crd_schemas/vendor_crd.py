"""Write the openAPIV3Schema of a CRD's served storage version as gzip-compressed JSON.

    python tests/deploy/crd_schemas/vendor_crd.py CRD.yaml OUT.json.gz

Only the schema is kept (not the whole CRD), with sorted keys and no timestamp in the gzip
header, so that vendoring the same CRD twice gives the same bytes.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import yaml


def served_schema(crd: dict) -> dict:
    """The openAPIV3Schema of the one version that is served and stored."""
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    return {
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": version["name"],
        "openAPIV3Schema": version["schema"]["openAPIV3Schema"],
    }


def main(source: str, target: str) -> None:
    schema = served_schema(yaml.safe_load(Path(source).read_text()))
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    Path(target).write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))
    print(f"{target}: {schema['group']}/{schema['version']} {schema['kind']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
