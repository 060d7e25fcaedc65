#!/usr/bin/env bash
# Every GPU check in one call of the device tool (../shared/GPU.md: 15 minutes of device time
# per issue, at most 10 per call, 64 MiB carried). Prepare and rehearse here, then spend:
#
#   make gpu-wheels                              # here, once: .whl/ (omegaconf, webdataset, pytest, ...)
#   bash tools/gpu_check.sh --dry-run            # here: every check on the CPU, tiny ViT, one step
#   run(command="OUT=$OUT bash tools/gpu_check.sh", carry=[".whl"], timeout_s=540)   # there
#
# It installs the carried wheels, then runs each check with its own time limit and writes
# what it printed under $OUT: NAME.json (the profiler's JSON), NAME.log (stderr), and one line
# per check in summary.jsonl ({"check", "rc", "seconds"}). Model-side figures run on
# --data synthetic (batches made on the device), so no DALI, shards or webdataset decoding
# are needed there; the DALI checks are the `dali`-marked tests, run only if DALI is importable.
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if ls .whl/*.whl > /dev/null 2>&1 && ! "$PY" -c "import omegaconf, webdataset, pytest" 2> /dev/null; then
  "$PY" -m pip install -q --no-deps --target "$HOME/site" .whl/*.whl
  export PYTHONPATH="$HOME/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
summary="$OUT/summary.jsonl"
: > "$summary"

check() {  # check NAME SECONDS CMD...
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  rc=$?
  echo "{\"check\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" | tee -a "$summary"
}
skip() {  # skip NAME WHY
  echo "{\"check\": \"$1\", \"skipped\": \"$2\"}" | tee -a "$summary"
}

"$PY" - > "$OUT/env.json" << 'EOF'
import json, platform, torch, timm
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "timm": timm.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu"}))
EOF
cat "$OUT/env.json"

# the profiler's shapes: the recipes' on the GPU; a tiny ViT, one step, on the CPU rehearsal
if [ "$DRY" = 1 ]; then
  SIZE="--steps 1 --warmup 0 data.batch_size=4 model.kwargs.patch_size=8 model.kwargs.img_size=32
        model.kwargs.embed_dim=32 model.kwargs.num_heads=2 model.kwargs.depth=2 data.global_size=32
        data.local_size=16 data.n_local=2 model.out_dim=64 model.head_hidden=32 model.head_bottleneck=16
        model.proj_hidden=48 model.pred_hidden=48 model.proj_dim=16 model.decoder_dim=32 model.decoder_depth=1
        model.decoder_heads=2 model.guide_hidden=48"
  S128="" S256=""
else
  SIZE="--steps 10 --warmup 3"
  S128="data.batch_size=128" S256="data.batch_size=256"
fi
PROFILE="$PY tools/profile.py train --data synthetic"

# 1. every GPU-marked test (they skip on the CPU); the DALI ones only where DALI is there
if "$PY" -c "import nvidia.dali" 2> /dev/null; then MARK="gpu"; else MARK="gpu and not dali"; fi
check pytest_gpu 240 "$PY" -m pytest -q -m "$MARK" -rs --junitxml="$OUT/pytest_gpu.xml"

# 2. iBOT + AttMask ViT-S/16, 2x224 + 10x96, batch 128: eager, CUDA graphs (goal >= 2,500 images/s)
check ibot_vits16_eager 120 $PROFILE --recipe ibot_attmask $SIZE $S128
# 3. ExtreMA ViT-B/16, 80 % x 5, batch 256: eager, CUDA graphs (goal >= 2,000 images/s), shared vs naive
check extrema_vitb16_eager 120 $PROFILE --recipe extrema_vitb16 $SIZE $S256
if [ "$DRY" = 1 ]; then
  skip ibot_vits16_graphs "dry run: CUDA graphs need CUDA"
  skip extrema_vitb16_graphs "dry run: CUDA graphs need CUDA"
else
  check ibot_vits16_graphs 150 $PROFILE --recipe ibot_attmask $SIZE $S128 train.cuda_graphs=true
  check extrema_vitb16_graphs 150 $PROFILE --recipe extrema_vitb16 $SIZE $S256 train.cuda_graphs=true
fi
check extrema_vitb16_naive 150 $PROFILE --recipe extrema_vitb16 --compare naive $SIZE $S256
# 5. where the time goes: a trace of 3 steps of config 3 (TensorBoard / Perfetto)
rm -rf "$OUT/trace"
if [ "$DRY" = 1 ]; then TRACE_SIZE="$SIZE"; else TRACE_SIZE="--steps 3 --warmup 2"; fi
check extrema_vitb16_trace 120 $PROFILE --recipe extrema_vitb16 --trace "$OUT/trace" $TRACE_SIZE $S256
gzip -f "$OUT"/trace/*.pt.trace.json 2> /dev/null  # smaller to bring back; TensorBoard and Perfetto read .gz
# 6. AttMask against block-wise masking (goal <= 1.05)
check ibot_vits16_attmask_vs_block 150 $PROFILE --recipe ibot_attmask --compare block $SIZE $S128
# the masked autoencoders: LC-MAE ViT-B/16 (issue 14's goal >= 2,200 images/s), against MAE; SdAE against MAE
check lcmae_vitb16_vs_mae 150 $PROFILE --recipe lcmae --compare mae $SIZE $S256
check sdae_vitb16_vs_mae 150 $PROFILE --recipe sdae --compare mae $SIZE $S256

echo "results in $OUT"
! grep -q '"rc": [1-9]' "$summary"
