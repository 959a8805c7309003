#!/usr/bin/env bash
# The GPU measurements in one run, under 8 minutes on one H100 or H200:
#   throughput  benchmarks/train_throughput.py for TResNet-M at 448 px (random weights, batch 32)
#               on a synthetic set generated here: train steps S, T and R, inference, MFU, and
#               the channels_last and bf16 autocast A/B (--ab);
#   compile     the same with the torch.compile A/B alone, in a step of its own: compiling
#               takes minutes, and a step that runs out of time keeps the others' numbers;
#   streaming   benchmarks/streaming.py, when present: streamed batches against the whole split
#               in memory (its speed part reads Corel-5k under $ANNOTLIB_DATA_ROOT, default
#               ../shared/data; the dry run runs its memory part only).
# Each step has its own time limit, so a step that hangs cannot take the others' time, and its
# output is kept in <out>/gpu_check-<step>-<device>.txt. Writes <out>/gpu_check-<device>.json:
# each step's exit code, seconds and limit, and its results; exit code 1 when a step failed.
#
#   benchmarks/gpu_check.sh                        # on the GPU, into reports/bench/
#   benchmarks/gpu_check.sh --device cpu --out DIR # dry run of the same steps at tiny sizes
# The Python is $PYTHON, else .venv/bin/python, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda
out=reports/bench
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?--device needs cuda or cpu}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | cut -c3-; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (options: --device cuda|cpu, --out DIR)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
corel=${ANNOTLIB_DATA_ROOT:-../shared/data}/Corel-5k
case "$device" in
  # (warmup + steps) x batch training images are read: the set's train split (4 in 5) holds them.
  cuda) sizes=(--backbone tresnet_m --image-size 448 --batch-size 32 --steps 30 --warmup 5)
        images=1500; limits=(150 210 90)  # throughput, compile, streaming: 450 s in all
        # memory is measured on a CPU machine; here the speed of the two paths on the GPU
        streaming=(--skip rss --data-root "$corel")
        [ -d "$corel" ] || streaming=() ;;
  # The dry run checks the plumbing only: torch.compile's arm runs eagerly (inductor's C++
  # build would take minutes on a CPU), and streaming.py runs its memory part on 64 images.
  cpu)  sizes=(--backbone resnet10t --image-size 32 --batch-size 4 --steps 2 --warmup 1 --eval-batch-size 8)
        images=40; limits=(600 600 600); export TORCH_COMPILE_DISABLE=1
        streaming=(--skip speed --images 64 --rss-batch-size 16) ;;
  *) echo "gpu_check.sh: --device $device: expected cuda or cpu" >&2; exit 2 ;;
esac
mkdir -p "$out"
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
started=$SECONDS
"$python" -c "import sys; from annotlib.data.synthetic import generate_synthetic as g; g(sys.argv[1], num_images=int(sys.argv[2]), seed=0)" \
  "$data/synthetic" "$images" || exit 1

# run_step NAME LIMIT_S COMMAND...: its output also into <out>/gpu_check-NAME-<device>.txt, and
# one line "NAME EXIT_CODE SECONDS LIMIT_S" into $data/steps
run_step() {
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name (at most $limit s): $*"
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$out/gpu_check-$name-$device.txt"
  echo "$name ${PIPESTATUS[0]} $((SECONDS - start)) $limit" >> "$data/steps"
}

for step in throughput compile; do
  if [ $step = compile ]; then ab=(compile); limit=${limits[1]}; else ab=(channels_last bf16); limit=${limits[0]}; fi
  run_step $step "$limit" "$python" benchmarks/train_throughput.py --device "$device" \
    --dataset synthetic --data-root "$data/synthetic" "${sizes[@]}" --ab --ab-options "${ab[@]}" \
    --json "$out/gpu_check-$step-$device.json"
done
# STREAMING: benchmarks/streaming.py arrives with annotlib/data/batches.py's streaming path;
# until it is present (or, on the GPU, while Corel-5k is missing) this step is recorded as
# skipped, with the reason.
if [ ! -f benchmarks/streaming.py ]; then
  echo "streaming benchmarks/streaming.py is not present" > "$data/skipped"
elif [ ${#streaming[@]} -eq 0 ]; then
  echo "streaming no Corel-5k at $corel (streaming.py's speed part reads it)" > "$data/skipped"
else
  run_step streaming "${limits[2]}" "$python" benchmarks/streaming.py --device "$device" "${streaming[@]}"
fi

"$python" - "$out" "$device" "$data" "$((SECONDS - started))" "${sizes[*]}" <<'PY'
import json, sys
from pathlib import Path
from annotlib.io import write_json

out, device, data, seconds, sizes = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), *sys.argv[4:]
def lines(name):
    return (data / name).read_text().splitlines() if (data / name).exists() else []
ran = {name: (int(code), int(secs), int(limit)) for name, code, secs, limit in map(str.split, lines("steps"))}
skipped = dict(line.split(" ", 1) for line in lines("skipped"))
report = {"device": device, "dry_run": device == "cpu", "sizes": sizes, "seconds": int(seconds), "steps": {}}
for name in ("throughput", "compile", "streaming"):
    if name in skipped:
        report["steps"][name], report[name] = {"skipped": skipped[name]}, None
        continue
    code, secs, limit = ran[name]
    text = out / f"gpu_check-{name}-{device}.txt"
    report["steps"][name] = {"exit_code": code, "seconds": secs, "limit_s": limit,
                             "timed_out": code in (124, 137), "output": str(text)}
    # train_throughput.py writes its numbers as JSON; streaming.py prints them
    numbers = out / f"gpu_check-{name}-{device}.json"
    report[name] = None if code else (json.loads(numbers.read_text()) if numbers.exists()
                                      else {"printed": text.read_text().splitlines()})
write_json(out / f"gpu_check-{device}.json", report)
failed = [name for name, step in report["steps"].items() if step.get("exit_code", 0)]
print(f"\ngpu_check: {report['seconds']} s; written to {out / f'gpu_check-{device}.json'}"
      + (f"; FAILED: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
PY
