#!/usr/bin/env bash
# vendor.sh installs the pinned packages of package-lock.json (npm ci) in
# a scratch directory and copies their pre-built UMD files and licences
# into ../static/vendor, where go:embed takes them. No bundle step: the
# files are the packages' own dist. cytoscape-dagre's dist already holds
# dagre and graphlib (the versions pinned here, for their licences).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../static/vendor"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$tmp/"
(cd "$tmp" && npm ci --no-audit --no-fund --ignore-scripts --silent)
m="$tmp/node_modules"
mkdir -p "$out"
cp "$m/cytoscape/dist/cytoscape.min.js" "$out/cytoscape.min.js"
cp "$m/cytoscape-dagre/dist/cytoscape-dagre.min.js" "$m/cytoscape-dagre/dist/cytoscape-dagre.min.js.map" "$out/"
cp "$m/cytoscape/LICENSE" "$out/LICENSE.cytoscape"
cp "$m/cytoscape-dagre/LICENSE" "$out/LICENSE.cytoscape-dagre"
cp "$m/@dagrejs/dagre/LICENSE" "$out/LICENSE.dagre"
cp "$m/@dagrejs/graphlib/LICENSE" "$out/LICENSE.graphlib"
{
	echo "Vendored by topology/web/npm/vendor.sh from the npm registry; versions pinned in package-lock.json:"
	for p in cytoscape cytoscape-dagre @dagrejs/dagre @dagrejs/graphlib; do
		node -p "const p=require('$m/$p/package.json'); p.name+' '+p.version+' ('+p.license+')'"
	done
} >"$out/VERSIONS"
