#!/usr/bin/env bash
# Fetch the JavaScript the book needs to render math and widgets without a CDN, from the
# npm registry, and copy it into book/_static/vendor/ (git-ignored; Sphinx copies it into
# _build/html/_static/vendor/ at build time):
#
#   mathjax 3.2.2                        -> book/_static/vendor/mathjax/       (tex-chtml.js + fonts)
#   @jupyter-widgets/html-manager 1.0.15 -> book/_static/vendor/html-manager/  (embed.js: renders
#                                           the widget state stored in the notebooks)
#
# _config.yml points Sphinx at these files (mathjax_path, nb_ipywidgets_js).
# Needs node/npm (>= 18) and network access to the npm registry the first time; the packed
# tarballs are kept in build/book-assets/ (git-ignored) and checked against the pinned
# sha512 integrity below, so later runs need no network.
#
# Usage: scripts/fetch_book_assets.sh        (from anywhere; run before `jupyter-book build .`)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${BOOK_ASSETS_CACHE:-$root/build/book-assets}"
vendor="$root/book/_static/vendor"

# name@version  tarball  sha512 integrity (as published by the registry)
packages=(
  "mathjax@3.2.2 mathjax-3.2.2.tgz sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
  "@jupyter-widgets/html-manager@1.0.15 jupyter-widgets-html-manager-1.0.15.tgz sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA=="
)

sha512_of() {  # the npm "integrity" string of a file
  python3 -c 'import base64,hashlib,sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1],"rb").read()).digest()).decode())' "$1"
}

mkdir -p "$cache"
for entry in "${packages[@]}"; do
  read -r spec tarball integrity <<<"$entry"
  if [[ ! -f "$cache/$tarball" ]]; then
    command -v npm >/dev/null || { echo "fetch_book_assets: npm is needed to fetch $spec (install Node.js >= 18)" >&2; exit 1; }
    echo "fetch_book_assets: npm pack $spec"
    (cd "$cache" && npm pack "$spec" --silent >/dev/null)
  fi
  got="$(sha512_of "$cache/$tarball")"
  if [[ "$got" != "$integrity" ]]; then
    echo "fetch_book_assets: $tarball has integrity $got, expected $integrity" >&2
    rm -f "$cache/$tarball"
    exit 1
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -rf "$vendor/mathjax" "$vendor/html-manager"
mkdir -p "$vendor/mathjax" "$vendor/html-manager" "$work/mathjax" "$work/html-manager"

tar -xzf "$cache/mathjax-3.2.2.tgz" -C "$work/mathjax"
cp -R "$work/mathjax/package/es5/." "$vendor/mathjax/"
cp "$work/mathjax/package/LICENSE" "$vendor/mathjax/LICENSE"

tar -xzf "$cache/jupyter-widgets-html-manager-1.0.15.tgz" -C "$work/html-manager"
# embed.js (self-contained: the standard widgets, no RequireJS) and the font files it loads
find "$work/html-manager/package/dist" -maxdepth 1 -type f ! -name '*.js' ! -name '*.map' -exec cp {} "$vendor/html-manager/" \;
cp "$work/html-manager/package/dist/embed.js" "$vendor/html-manager/"
cp "$work/html-manager/package/LICENSE" "$vendor/html-manager/LICENSE" 2>/dev/null || true

echo "fetch_book_assets: MathJax and the widget embed script are in ${vendor#$root/}"
