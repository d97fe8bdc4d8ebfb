#!/bin/sh
# embed.sh DIR NAME...: write C source that holds the templates DIR/NAME as
# strings (mc_templates[] of compiler/emit.h), so that an installed moecc
# needs no template files.
set -e
dir=$1
shift
echo '/* templates.c: made by templates/embed.sh from templates/. Do not edit. */'
echo '#include <stddef.h>'
echo '#include "emit.h"'
echo
echo 'const mc_template mc_templates[] = {'
for name in "$@"; do
    printf '    { "%s",\n' "$name"
    sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/?/\\?/g' -e 's/	/\\t/g' \
        -e 's/^/      "/' -e 's/$/\\n"/' "$dir/$name"
    printf '    },\n'
done
echo '    { NULL, NULL },'
echo '};'
