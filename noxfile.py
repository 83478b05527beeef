"""Development tasks: ``nox -s tests lint typecheck docs`` (and ``bench``, ``soak``)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).parent
JS_DIR = ROOT / "tests" / "js"


def install_node_packages(session: nox.Session) -> None:
    """Install the pinned npm packages of the interop tests (yjs, y-websocket, ...)."""
    with session.chdir(JS_DIR):
        session.run("npm", "ci", "--no-audit", "--no-fund", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, end-to-end and interop tests (the interop tests run real Node clients)."""
    session.install("-e", ".[test]")
    install_node_packages(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src."""
    session.install("-e", ".[test]", "mypy==2.4.1")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs, warnings as errors."""
    session.install("-e", ".", "sphinx>=7")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


BENCH_DIR = ROOT / "tests" / "bench"


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with the peers (a few minutes).

    Writes bench-results.json, bench-results.md and docs/_static/bench.png. Arguments pick a
    workload and its sizes instead: ``nox -s bench -- fanout --clients 50``; see
    ``python tests/bench/bench.py --help``.
    """
    session.install("-e", ".[pycrdt]")
    # The peers and the tools: one that does not install is reported in the results.
    for requirement in ("pycrdt-websocket", "hypercorn>=0.16", "matplotlib", "py-spy"):
        session.run("python", "-m", "pip", "install", "--quiet", requirement, success_codes=[0, 1])
    # The load generator and the Node peers (the peers are optional dependencies).
    with session.chdir(BENCH_DIR / "js"):
        session.run("npm", "ci", "--no-audit", "--no-fund", external=True)
    session.run("python", str(BENCH_DIR / "bench.py"), *(session.posargs or ["all"]))


SOAK_DIR = ROOT / "tests" / "soak"


@nox.session
def soak(session: nox.Session) -> None:
    """A live server under steady y-websocket traffic, its RSS and descriptors sampled.

    Three minutes by default; ``nox -s soak -- --minutes 60 --peer reference --check-growth``
    is the acceptance run (beside @y/websocket-server). Writes soak-results.json; see
    ``python tests/soak/soak.py --help`` for the traffic's sizes and the memory dumps.
    """
    session.install("-e", ".")
    install_node_packages(session)
    session.run("python", str(SOAK_DIR / "soak.py"), *session.posargs)
