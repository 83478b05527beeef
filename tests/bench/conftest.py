"""Nothing under tests/bench is a test: the benchmarks run with ``nox -s bench``."""

collect_ignore_glob = ["*"]
