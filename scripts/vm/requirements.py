"""Prints what pip needs for this checkout, one requirement a line: the
project's dependencies, every extra, and its build requirements (used by
scripts/vm/build-image to fill the guest's offline wheel directory)."""
import sys
import tomllib

with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as f:
    d = tomllib.load(f)
p = d.get("project", {})
reqs = ["pip", "wheel"] + list(p.get("dependencies", []))
for extra in p.get("optional-dependencies", {}).values():
    reqs += extra
reqs += d.get("build-system", {}).get("requires", [])
print("\n".join(dict.fromkeys(reqs)))
