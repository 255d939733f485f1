#!/usr/bin/env bash
# Render an explain report in headless Chromium (Debian: `apt-get install chromium`): the DOM must hold
# every rollout of the file, and a screenshot of the top of the page is written beside it.
#   bash tools/check_report_renders.sh [outputs/explain/report.html [screenshot.png]]
# tests/test_explain.py runs the same check when chromium is installed (and skips it otherwise).
set -euo pipefail
REPORT=${1:-outputs/explain/report.html}
PNG=${2:-${REPORT%.html}.png}
command -v chromium >/dev/null || { echo "chromium is not installed: apt-get install chromium" >&2; exit 2; }
[ -f "$REPORT" ] || { echo "no report at $REPORT: run verl-credit explain first" >&2; exit 2; }
FLAGS=(--headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,2400)
URL="file://$(realpath "$REPORT")"
in_file=$(grep -o 'id="rollout-[0-9]*"' "$REPORT" | sort -u | wc -l)
in_dom=$(chromium "${FLAGS[@]}" --dump-dom "$URL" 2>/dev/null | grep -o 'id="rollout-[0-9]*"' | sort -u | wc -l)
chromium "${FLAGS[@]}" --screenshot="$PNG" "$URL" >/dev/null 2>&1
if [ "$in_file" -eq 0 ] || [ "$in_dom" -ne "$in_file" ] || [ ! -s "$PNG" ]; then
    echo "FAIL: $in_dom of $in_file rollouts in the rendered DOM; screenshot: $PNG" >&2
    exit 1
fi
echo "OK: chromium rendered $REPORT ($in_dom rollouts); screenshot $PNG"
