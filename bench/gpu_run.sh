#!/usr/bin/env bash
# bench/gpu_run.sh [STEP...]: the device-machine side of docs/gpu.md. Run from the repository root.
#
# STEP is any of: gpu (engine suite, GPU part), cpu (engine suite, CPU part), bench (the benchmark,
# on GPU 0 only), stage (only copy carried parts). Default: gpu cpu bench.
#
# Before any step, vLLM 0.22.0 must be importable from /tmp/site. If it is not, the parts of the
# site tarball (.gpu/vllm022xz/part_00..04, made by bench/make_site_parts.sh) are gathered: each
# call copies the parts it carries to /tmp/parts; once all five are there (sha256 checked) they are
# unpacked into /tmp/site. /tmp survives between calls only while the machine stays warm.
# Logs, JUnit XML and the benchmark JSON go to $OUT.
set -u -o pipefail
OUT=${OUT:-/tmp/out}
SITE=/tmp/site
SHA=e65d15367eab09e22cd997337dc8b80f7ad72312a62931081b7973e1b88667cb
mkdir -p "$OUT" /tmp/parts
for p in .gpu/vllm022xz/part_0*; do [ -f "$p" ] && cp "$p" /tmp/parts/; done

have_vllm() {
  PYTHONPATH=$SITE python3 -c "import importlib.metadata as m; assert m.version('vllm') == '0.22.0'" 2>/dev/null
}

install() {
  have_vllm && return 0
  ls /tmp/parts
  [ "$(ls /tmp/parts | wc -l)" -lt 5 ] && { echo "STAGED: $(ls /tmp/parts | wc -l) of 5 parts"; return 1; }
  got=$(cat /tmp/parts/part_0* | sha256sum | cut -d' ' -f1)
  [ "$got" = "$SHA" ] || { echo "parts corrupt: sha256 $got, want $SHA"; return 1; }
  mkdir -p "$SITE"; t=$(date +%s)
  if command -v xz >/dev/null; then
    cat /tmp/parts/part_0* | xz -dc -T0 | tar x -C "$SITE" || return 1
  else
    cat /tmp/parts/part_0* | python3 -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('$SITE')" || return 1
  fi
  echo "unpacked in $(( $(date +%s) - t )) s: $(du -sh $SITE | cut -f1)"
  have_vllm
}

[ "${1:-}" = stage ] && { ls /tmp/parts; exit 0; }
install || exit 1
export PYTHONPATH=$SITE:$PWD/src PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset ROLLOUT_MATRIX_ENTRY
date; nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv
python3 -c "import sys, torch, transformers, importlib.metadata as m; print(sys.version.split()[0], torch.__version__, transformers.__version__, 'vllm', m.version('vllm'))"
[ $# -eq 0 ] && set -- gpu cpu bench
for step in "$@"; do
  case $step in
    gpu) timeout 300 python3 -m pytest tests/engine -m gpu -v -p no:cacheprovider --junitxml="$OUT/junit-gpu.xml" \
           2>&1 | tee "$OUT/pytest-gpu.log"; echo "gpu suite rc=$?" ;;
    cpu) timeout 120 python3 -m pytest tests/engine -m "not gpu" -v -p no:cacheprovider --junitxml="$OUT/junit-cpu.xml" \
           2>&1 | tee "$OUT/pytest-cpu.log"; echo "cpu suite rc=$?" ;;
    bench) CUDA_VISIBLE_DEVICES=${BENCH_GPU:-0} timeout "${BENCH_TIMEOUT:-540}" python3 bench/rollout_bench.py \
             --json "$OUT/bench.json" --workdir /tmp/rollout-bench 2>&1 | tee "$OUT/bench.log"; echo "bench rc=$?" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
