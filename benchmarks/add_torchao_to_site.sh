#!/bin/bash
# train.fp8 needs torchao on the GPU machine, but prepare_site.py leaves out every package whose name starts with
# "torch" (the machine's own builds): add torchao's wheel to .gpu-site.tar.xz after it. From the repository root:
#   python3 ../shared/gpu/prepare_site.py ... && bash benchmarks/add_torchao_to_site.sh [VERSION]
set -eu
version=${1:-0.18.0}
python=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download -q "torchao==$version" --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --implementation cp -d "$work"
tar xJf .gpu-site.tar.xz -C "$work"
"$python" -m zipfile -e "$work"/torchao-*.whl "$work/.gpu-site"
(cd "$work" && tar cf - .gpu-site | xz -T0 -6 > site.tar.xz)
mv "$work/site.tar.xz" .gpu-site.tar.xz
echo "torchao $version added to .gpu-site.tar.xz ($(du -h .gpu-site.tar.xz | cut -f1))"
