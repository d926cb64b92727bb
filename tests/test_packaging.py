"""Package metadata: the license in the SPDX form setuptools ≥ 77 wants (a ``project.license`` table
is deprecated and stops building in 2027), and a build requirement that understands it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.licenses import canonicalize_license_expression

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_license_is_an_spdx_expression_and_setuptools_can_read_it():
    data = tomllib.loads(PYPROJECT.read_text())
    license_ = data["project"]["license"]
    assert isinstance(license_, str), "project.license must be an SPDX string, not a table"
    assert canonicalize_license_expression(license_) == license_
    # License classifiers next to an SPDX expression make setuptools refuse the build
    assert not [c for c in data["project"].get("classifiers", []) if c.startswith("License ::")]
    requires = " ".join(data["build-system"]["requires"])
    found = re.search(r"setuptools\s*>=\s*(\d+)", requires)
    assert found and int(found.group(1)) >= 77, "SPDX license strings need setuptools >= 77"
