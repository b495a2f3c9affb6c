"""Nox sessions: `tests` (pytest in trio mode), `lint` (ruff + mypy strict),
`browser` (the dashboard in headless Chromium), `bench` (benchmarks) and `soak`
(a long run under churn); the last three are not run by default."""

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, against the installed package."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Style and strict typing for the package, the CLI and the tests."""
    session.install(".[test,lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("lint-imports")  # the layers of LAYERS.md, contracts in pyproject.toml


@nox.session
def browser(session: nox.Session) -> None:
    """The dashboard in real headless Chromium; needs /usr/bin/chromium and chromedriver."""
    session.install(".[test,browser]")
    session.run("pytest", "tests/browser", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against real server processes; writes docs/benchmarks.md and .json.

    `nox -s bench -- --quick` is CI-sized and `-- --only fanout` runs one scenario;
    both write to build/bench/ instead. Any run fails (exit 1, a `bench gate FAILED:`
    line per figure) when server CPU per delivery at 1,000 batched subscribers is
    over 1 µs or, in a quick run, a figure is worse than bench/baseline.json by more
    than its measured noise (bench/gate.py).
    """
    session.install(".[bench]")
    typed = " ".join(["nox -s bench", *(["--", *session.posargs] if session.posargs else [])])
    session.run("python", "-m", "bench.run", *session.posargs, env={"BENCH_COMMAND": typed})


@nox.session
def soak(session: nox.Session) -> None:
    """A busy server's churn for `-- --minutes N` (default 30), with a kill -9 every
    `--kill-every M` minutes (default 5, 0: never); writes docs/soak.md and .json
    (`--out PATH` elsewhere) and fails on a gap, a lost mark or a growing RSS."""
    session.install(".[bench]")
    typed = " ".join(["nox -s soak", *(["--", *session.posargs] if session.posargs else [])])
    session.run("python", "-m", "bench.soak", *session.posargs, env={"SOAK_COMMAND": typed})
