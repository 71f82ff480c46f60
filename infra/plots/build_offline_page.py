"""Write .dvc/plots/offline.html: the page `dvc plots show/diff` fills, with vega, vega-lite and vega-embed inlined.

DVC's own page loads those three scripts from a CDN, so without network its plots are blank. This page has them
inside (about 830 kB, BSD-3-Clause, licences in .dvc/plots/vendor-licenses.txt) and no {scripts} placeholder, so
DVC adds no CDN tags; `.dvc/config` names it (plots.html_template). Rebuild after changing VERSIONS:

    npm install --prefix /tmp/vega vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
    python infra/plots/build_offline_page.py /tmp/vega/node_modules
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VERSIONS = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # the majors dvc-render's page uses
PLOTS = Path(__file__).resolve().parents[2] / ".dvc" / "plots"
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>DVC plots</title>
<!-- {versions}: inlined from npm so the page renders offline (infra/plots/build_offline_page.py) -->
{scripts}
<style>
  body {{ font-family: sans-serif; margin: 16px; }}
  div[id] {{ margin-bottom: 24px; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def _declared(package: str, folder: Path) -> str:
    """What package.json says, for a package whose npm tarball has no LICENSE file (vega)."""
    declared = json.loads((folder / "package.json").read_text())["license"]
    return f"{declared} (package.json; the npm package ships no LICENSE file: https://github.com/vega/{package})\n"


def build(node_modules: Path) -> str:
    scripts, licences = [], []
    for package, version in VERSIONS.items():
        folder = node_modules / package
        found = json.loads((folder / "package.json").read_text())["version"]
        if found != version:
            raise SystemExit(f"{package} {found} installed, {version} expected")
        code = (folder / "build" / f"{package}.min.js").read_text()
        code = "\n".join(line for line in code.splitlines() if not line.startswith("//# sourceMappingURL="))
        if "</script" in code or "{plot_divs}" in code or "{scripts}" in code:
            raise SystemExit(f"{package}.min.js cannot be inlined as is")
        scripts.append(f"<script>\n{code}\n</script>")
        licence = folder / "LICENSE"
        text = licence.read_text() if licence.is_file() else _declared(package, folder)
        licences.append(f"== {package} {version} ==\n{text}")
    (PLOTS / "vendor-licenses.txt").write_text("\n".join(licences))
    versions = ", ".join(f"{name} {version}" for name, version in VERSIONS.items())
    return PAGE.format(versions=versions, scripts="\n".join(scripts))


if __name__ == "__main__":
    (PLOTS / "offline.html").write_text(build(Path(sys.argv[1])))
