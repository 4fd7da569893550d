#!/usr/bin/env bash
# The regression and logistic studies at the authors' protocol, then the sign-trap test (issue 35).
# Each step writes its own folder; COMMIT=1 commits that folder as the step ends, so a session cut
# off mid-way keeps what finished. About 75 + 10 + 3 minutes on 2 idle cores.
#   COMMIT=1 scripts/study_linear.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
REWA=${REWA:-.venv/bin/rewa}

commit() {  # commit() FOLDER MESSAGE
    if [[ "${COMMIT:-0}" == 1 ]]; then
        git add -- "$1" && git commit -q -m "$2" -- "$1" || true
    fi
}

"$REWA" study linear --protocol published --out-dir results/study_linear/published --quiet
commit results/study_linear/published "study_linear/published: rerun on the authors' loss (mean MSE), five-value grids"
"$REWA" study logistic --out-dir results/study_logistic --quiet
commit results/study_logistic "study_logistic: rerun with five-value grids"
"$PY" scripts/sign_trap.py --out results/study_linear/published/sign_trap.md
commit results/study_linear/published/sign_trap.md "sign_trap: rerun on the authors' loss (mean MSE)"
