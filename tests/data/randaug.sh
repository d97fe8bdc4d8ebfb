#!/bin/sh
# randaug.sh: libmoert's RandAugment (runtime/data_randaug.c) against
# torchvision's operations, through tests/tools/randaug_tool
# (randaug_check.py says what must match). Skipped where torchvision is
# not installed (the README's test command installs python3-torchvision).
: "${top_srcdir:=.}" "${top_builddir:=.}"
PY=${PYTHON_TORCH:-python3}
tool=$top_builddir/tests/tools/randaug_tool
if [ ! -x "$tool" ]; then
    echo "not ok - $tool is not built"
    exit 1
fi
exec "$PY" "$top_srcdir/tests/data/randaug_check.py" "$tool"
