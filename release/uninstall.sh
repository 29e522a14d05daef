#!/bin/sh
# Removes what Bulkhead's install.sh installed, exactly: the files and links listed in
# /opt/bulkhead/share/install-manifest, then the directories it created, when empty.
# /etc/bulkhead (the administrator's configuration), images in /var/lib/bulkhead and the
# state of running containers are left alone: stop pods first (bulkhead check lists what
# still runs).
set -eu

manifest=/opt/bulkhead/share/install-manifest
[ "$(id -u)" = 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }
[ -f "$manifest" ] || { echo "uninstall.sh: no $manifest: nothing installed" >&2; exit 1; }
list=$(mktemp)
trap 'rm -f "$list"' EXIT
cp "$manifest" "$list"

# containerd's config.toml as it was before install.sh --configure-containerd edited it.
backup=/etc/containerd/config.toml.before-bulkhead
if grep -qxF "$backup" "$list" && [ -f "$backup" ]; then
    mv -f "$backup" /etc/containerd/config.toml
fi
# Files and links (never a directory's contents: only what is listed).
grep -v '/$' "$list" | while IFS= read -r f; do
    if [ -L "$f" ] || [ -f "$f" ]; then rm -f "$f"; fi
done
# Directories this install created, deepest first, if nothing else is in them.
grep '/$' "$list" | sort -r | while IFS= read -r d; do
    rmdir "${d%/}" 2>/dev/null || true
done
echo "Bulkhead uninstalled"
