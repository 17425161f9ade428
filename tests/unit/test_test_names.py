"""pytest imports test files by their base name (the folders have no
__init__.py, as rootdir-relative imports keep the helpers in tests/lib
simple), so two files of one name in two level folders stop the whole
suite at collection: each name once."""
import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parent.parent


def test_every_test_file_name_is_unique_across_the_level_folders():
    seen = collections.defaultdict(list)
    for p in TESTS.rglob("test_*.py"):
        seen[p.name].append(str(p.relative_to(TESTS)))
    twice = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not twice, f"rename one of each: {twice}"
