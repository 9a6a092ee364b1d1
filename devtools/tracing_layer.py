"""The tracing layer: X-Ray's SDK for the stages with tracing on, beside the deployment zip.

    python -m devtools.tracing_layer --stage prod build/package/

`make package` runs this after `chalice package`. For a stage with `"xray": true`
in .chalice/config.json it writes `tracing-layer.zip` (requirements-tracing.txt,
installed for the Lambda runtime's platform) into the package directory, where
the stage's merge template (`TracingLayer`, deploy/merge/) finds it; for any
other stage it writes nothing. The deployment zip itself never holds the SDK:
it pulls botocore in, which the runtime already has (docs/DEPLOY.md, "Tracing").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
LAYER_ZIP = "tracing-layer.zip"
REQUIREMENTS = "requirements-tracing.txt"
# Chalice picks the Lambda runtime from the Python that packages (python3.11 here), x86_64 by default.
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
PLATFORM = "manylinux2014_x86_64"


def traced(stage: str, project: Path = PROJECT_DIR) -> bool:
    """Whether the stage turns X-Ray on (Chalice's `xray`, per stage or for all)."""
    config = json.loads((project / ".chalice" / "config.json").read_text())
    return bool(config.get("stages", {}).get(stage, {}).get("xray", config.get("xray", False)))


def build(out: Path, project: Path = PROJECT_DIR) -> Path:
    """`tracing-layer.zip` in `out`: the packages under python/, as Lambda layers lay them out."""
    work = Path(tempfile.mkdtemp(prefix="ec2-eds-layer-"))
    try:
        target = work / "python"
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                *("--target", str(target), "--no-deps", "--only-binary=:all:", "--implementation", "cp"),
                *("--platform", PLATFORM, "--python-version", RUNTIME.removeprefix("python")),
                *("-r", str(project / REQUIREMENTS)),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        out.mkdir(parents=True, exist_ok=True)
        archive = out / LAYER_ZIP
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as layer:
            for path in sorted(target.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    layer.write(path, path.relative_to(work).as_posix())
        return archive
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_if_traced(stage: str, out: Path, project: Path = PROJECT_DIR) -> Path | None:
    return build(out, project) if traced(stage, project) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.tracing_layer", description=__doc__.split("\n")[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("out", type=Path, help="the package directory (build/package/)")
    args = parser.parse_args(argv)
    try:
        archive = build_if_traced(args.stage, args.out)
    except subprocess.CalledProcessError as err:
        print(f"building the tracing layer failed: {err.stderr.strip()[-800:]}", file=sys.stderr)
        return 1
    print(f"{archive} ({archive.stat().st_size} bytes)" if archive else f"stage {args.stage}: no tracing, no layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
