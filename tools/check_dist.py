"""Check what the sdist and the wheels hold (run by `make wheel`; exits non-zero on a problem).

    python tools/check_dist.py SDIST WHEEL [WHEEL ...]

The sdist must carry every source the compiled core builds from -- each csrc/*.c and
*.h, each .pyx/.pxi/.pxd of src/fastq -- plus every .py/.pyi, py.typed and LICENSE, and
no .c Cython generated. A wheel must hold only what runs: the compiled modules (one per
.pyx), .py, .pyi, py.typed, and its .dist-info with the license (PEP 639); no Cython or C
source. Paths are compared with the checkout this runs from.
"""
from __future__ import annotations

import glob
import os
import sys
import tarfile
import zipfile

SOURCE_SUFFIXES = (".pyx", ".pxi", ".pxd", ".c", ".h", ".cpp")
WHEEL_PACKAGE_SUFFIXES = (".py", ".pyi", ".so", ".pyd")


def checkout_files() -> list[str]:
    pats = ["csrc/*.c", "csrc/*.h", "LICENSE", "src/fastq/py.typed"]
    pats += [f"src/fastq/**/*{ext}" for ext in (".py", ".pyi", ".pyx", ".pxi", ".pxd")]
    return sorted({f for p in pats for f in glob.glob(p, recursive=True)})


def check_sdist(path: str) -> list[str]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    held = {n[len(top) + 1:] for n in names if n.startswith(top + "/")}
    problems = [f"sdist lacks {f}" for f in checkout_files() if f not in held]
    problems += [f"sdist ships the generated {f}" for f in sorted(held)
                 if f.startswith("src/fastq/") and f.endswith((".c", ".cpp"))]
    return problems


def check_wheel(path: str, pyx_stems: set[str]) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    problems = [f"{os.path.basename(path)} ships the source {n}" for n in names
                if n.endswith(SOURCE_SUFFIXES)]
    for n in names:
        if n.endswith("/"):                 # a directory entry (auditwheel writes them)
            continue
        top = n.split("/")[0]
        if top.endswith((".dist-info", ".libs")) or n.endswith(SOURCE_SUFFIXES):
            continue                        # metadata, auditwheel's grafted libs; sources above
        if top != "fastq":
            problems.append(f"{os.path.basename(path)} has {n} outside the fastq package")
        elif not (n.endswith(WHEEL_PACKAGE_SUFFIXES) or n == "fastq/py.typed"):
            problems.append(f"{os.path.basename(path)} ships {n}, which is not a module, stub or py.typed")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append(f"{os.path.basename(path)} lacks .dist-info/licenses/LICENSE")
    compiled = {n.split("/")[-1].split(".")[0] for n in names if n.endswith((".so", ".pyd"))}
    problems += [f"{os.path.basename(path)} lacks the compiled module of {s}.pyx"
                 for s in sorted(pyx_stems - compiled)]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    sdist, wheels = argv[0], argv[1:]
    pyx = {os.path.basename(f)[:-4] for f in glob.glob("src/fastq/**/*.pyx", recursive=True)}
    problems = check_sdist(sdist)
    for w in wheels:
        problems += check_wheel(w, pyx)
    for p in problems:
        print("check_dist:", p, file=sys.stderr)
    if not problems:
        print(f"check_dist: {os.path.basename(sdist)} holds all {len(checkout_files())} sources;"
              f" {len(wheels)} wheel(s) hold only modules, stubs, py.typed and the license")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
