#!/usr/bin/env bash
# Render an explain report in headless Chromium (Debian: `apt-get install chromium`): the DOM must hold
# every rollout of the file and every column of the side-by-side view, and a screenshot of the top of the
# page is written beside it (look at it).
#   bash tools/check_report_renders.sh [outputs/explain/report.html [screenshot.png]]
# tests/test_explain.py runs the same check when chromium is installed (and skips it otherwise).
set -euo pipefail
REPORT=${1:-outputs/explain/report.html}
PNG=${2:-${REPORT%.html}.png}
command -v chromium >/dev/null || { echo "chromium is not installed: apt-get install chromium" >&2; exit 2; }
[ -f "$REPORT" ] || { echo "no report at $REPORT: run verl-credit explain first" >&2; exit 2; }
FLAGS=(--headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,2400)
URL="file://$(realpath "$REPORT")"
DOM=$(chromium "${FLAGS[@]}" --dump-dom "$URL" 2>/dev/null)
in_file=$(grep -o 'id="rollout-[0-9]*"' "$REPORT" | sort -u | wc -l)
in_dom=$(grep -o 'id="rollout-[0-9]*"' <<<"$DOM" | sort -u | wc -l)
cols_file=$(grep -o 'class="ccol"' "$REPORT" | wc -l)
cols_dom=$(grep -o 'class="ccol"' <<<"$DOM" | wc -l)
chromium "${FLAGS[@]}" --screenshot="$PNG" "$URL" >/dev/null 2>&1
if [ "$in_file" -eq 0 ] || [ "$in_dom" -ne "$in_file" ] || [ "$cols_dom" -ne "$cols_file" ] || [ ! -s "$PNG" ]; then
    echo "FAIL: $in_dom of $in_file rollouts and $cols_dom of $cols_file side-by-side columns in the rendered DOM;" \
        "screenshot: $PNG" >&2
    exit 1
fi
echo "OK: chromium rendered $REPORT ($in_dom rollouts, $cols_dom estimators side by side); screenshot $PNG"
