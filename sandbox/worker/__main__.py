"""Worker entry point (runs inside the jail; standard library only)."""

import json
import sys

if __name__ == "__main__":
    with open("/out/manifest.json", "w") as fh:
        json.dump({"version": 1, "argv": sys.argv[1:]}, fh)
