#!/usr/bin/env bash
# ansible-test sanity needs the collection at .../ansible_collections/<ns>/<name> as a real
# directory (it resolves symlinks), so test a copy of the files in git's index (git add new files first).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# one copy per checkout (two checkouts' runs at once never share one), kept for its log
build=${BERTH_SANITY_DIR:-/tmp/berth-sanity-$(printf '%s' "$root" | md5sum | cut -c1-8)}
dest="$build/ansible_collections/berth/fleet"
rm -rf "$build"
mkdir -p "$dest"
cd "$root"
git ls-files -z --cached | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | rsync -a --from0 --files-from=- ./ "$dest/"
cd "$dest"
# a repository of its own, so ansible-test lists exactly these files
git init -q && git add -A && git -c user.email=ci@berth.invalid -c user.name=ci commit -qm sanity
# ansible-test bootstraps pip from a download host that is unreachable here: seed its cache
pip_version=$(grep -hoP "pip='\K[0-9.]+" "$root"/.venv/lib/python3.11/site-packages/ansible_test/_internal/python_requirements.py | head -1)
for v in ${pip_version:?cannot tell which pip ansible-test bootstraps}; do
  cache=~/.ansible/test/cache/get_pip_${v//./_}.py
  mkdir -p "$(dirname "$cache")"
  cmp -s "$root/tests/sanity/get_pip_offline.py" "$cache" || cp "$root/tests/sanity/get_pip_offline.py" "$cache"
done
start=$(date +%s)
log="$build/sanity.log"
echo "sanity: ansible-test sanity on a copy at $dest (log: $log)"
if "$root/.venv/bin/ansible-test" sanity --python 3.11 --venv --color no "$@" >"$log" 2>&1; then
  grep -c '^Running sanity test' "$log" | xargs -I{} echo "sanity: {} tests passed in $(( $(date +%s) - start )) s"
else
  grep -E '^(ERROR|FATAL)' "$log" || tail -40 "$log"
  echo "sanity: FAILED after $(( $(date +%s) - start )) s"
  exit 1
fi
