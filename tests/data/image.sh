#!/bin/sh
# image.sh: libmoert's decode, conversion and resize of image files against
# Pillow's, through tests/tools/image_tool (image_check.py says what must
# match). Skipped where Pillow is not installed (the README's test command
# installs python3-torchvision, which brings python3-pil).
: "${top_srcdir:=.}" "${top_builddir:=.}"
PY=${PYTHON_TORCH:-python3}
tool=$top_builddir/tests/tools/image_tool
if [ ! -x "$tool" ]; then
    echo "not ok - $tool is not built"
    exit 1
fi
exec "$PY" "$top_srcdir/tests/data/image_check.py" "$tool"
