"""Development tasks: ``nox -s tests lint typecheck docs`` (and ``demo``, ``bench``, ``fuzz``,
``soak``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).parent
JS_DIR = ROOT / "tests" / "js"
DEMO_DIR = ROOT / "examples" / "demo"
DEMO_STATIC = ROOT / "src" / "trio_ysync" / "demo" / "static"


def install_node_packages(session: nox.Session, directory: Path = JS_DIR) -> None:
    """Install the npm packages pinned by ``directory``'s lockfile (default: the interop
    tests' yjs, y-websocket, ...)."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        session.error(
            "Node.js 18 or later with npm is needed (the interop tests run the real yjs and "
            "y-websocket packages, the demo is built with esbuild): install it, for example "
            "`apt-get install nodejs npm` on Debian, then run nox again"
        )
    with session.chdir(directory):
        session.run("npm", "ci", "--no-audit", "--no-fund", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, end-to-end, interop and browser tests.

    The interop tests run real Node clients; the demo test runs Debian's chromium (``apt-get
    install chromium``; skipped with a reason where it is missing, except under CI).
    """
    session.install("-e", ".[test]")
    install_node_packages(session)
    install_node_packages(session, DEMO_DIR)  # the check that the shipped bundle is current
    session.run("pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Build the demo editor (examples/demo) into the package with esbuild.

    The output depends only on the sources and package-lock.json; commit it, since the test
    suite checks that the shipped files are what this session builds.
    """
    install_node_packages(session, DEMO_DIR)
    session.run("node", str(DEMO_DIR / "build.mjs"), str(DEMO_STATIC), external=True)


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
    session.install("-e", ".[redis]", "sphinx>=7", "sphinx-argparse>=0.5")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


BENCH_DIR = ROOT / "tests" / "bench"


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with the peers (a few minutes; the cluster needs redis-server).

    Writes bench-results.json, bench-results.md and docs/_static/bench.png. Arguments pick a
    workload and its sizes instead: ``nox -s bench -- fanout --clients 50``; see
    ``python tests/bench/bench.py --help``.
    """
    session.install("-e", ".[pycrdt,redis]")
    # The peers and the tools: one that does not install is reported in the results.
    for requirement in ("pycrdt-websocket", "hypercorn>=0.16", "matplotlib", "py-spy"):
        session.run("python", "-m", "pip", "install", "--quiet", requirement, success_codes=[0, 1])
    # The load generator and the Node peers (the peers are optional dependencies).
    with session.chdir(BENCH_DIR / "js"):
        session.run("npm", "ci", "--no-audit", "--no-fund", external=True)
    session.run("python", str(BENCH_DIR / "bench.py"), *(session.posargs or ["all"]))


@nox.session
def fuzz(session: nox.Session) -> None:
    """Attack a live ``trio-ysync serve`` with hostile clients while honest ones keep editing.

    Fails on a server crash, a traceback in its log, an honest client left behind or a
    cross-room leak. Arguments go to the fuzzer: ``nox -s fuzz -- --seconds 60 --messages 50000
    --store sqlite --seed 7``; see ``python tests/fuzz.py --help``. Without them: a short run.
    """
    session.install("-e", ".[test]")
    session.run(
        "python", "tests/fuzz.py", *(session.posargs or ["--seconds", "20", "--messages", "10000"])
    )


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
