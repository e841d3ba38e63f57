#!/usr/bin/env bash
# Every target row of issue 27 measured on one GPU (an H200 or H100) in one call of the device tool:
# stages ordered by value, inside one time budget that the pip installs count towards
# (S2S_GPU_BUDGET seconds, default 450: give the tool's timeout_s about 40 s more). Each stage gets
# at most its cap and what the budget has left, less what the summary needs; a stage that cannot
# have its minimum is skipped, and one that fails or runs out of time does not stop the next.
# Everything a stage writes goes to $S2S_GPU_WORK (default /tmp/s2s-gpu); after every stage, its
# small files are packed into $OUT/gpu_session.tar.gz, so that a call cut short still brings back
# what was done. $OUT also gets summary.md and RESULTS-appended.md (what this call appended to
# bench/RESULTS.md: the benches' own entries, then the summary with the machine line). The summary
# table (measure | figure | target | met?) is printed last.
#
# Before the call, on this machine, once (.whl is in .gitignore):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 ctranslate2==4.8.5
#   cp ../shared/peers/hf_marian.py .whl/     # the peer: ../shared does not travel
# The image (torch 2.11+cu130, Python 3.12) has transformers, accelerate, sentencepiece, sacrebleu,
# typer, rich, safetensors, pyarrow, pandas, xxhash, fsspec and huggingface-hub; it lacks datasets
# (with dill and multiprocess) and ctranslate2 (42 MB: the whole carry is about 44 MB of the 64 MiB
# a call takes). No stage serves, so fastapi and uvicorn stay behind. ctranslate2's wheel is a
# CUDA 12 build: it imports and counts the GPU on the image (2026-12-04), but translating on the GPU
# loads libcublas.so.12, which a CUDA 13 image may not have; setup says whether it loads, and the
# ct2 stage's log says why it failed if it does.
# Then one call of the device tool, with carry [".whl"] and timeout_s 490:
#   bash bench/gpu_session.sh
# or some stages only, in the order given: bash bench/gpu_session.sh profile recipe test
#
# Stages (issue 27's Targets rows they answer):
#   profile   row 1 and 2: bench/gpu_profile.py, 40 updates of the small preset at 4,096 tokens, a first
#             pass against a second over the same batches, with a profile of a third
#   compiled  rows 1 and 2 again with the compiled step (CUDA graphs), every shape warmed up first
#   mfu       row 4: the base preset at 65,536-token batches, model FLOPs utilisation
#   recipe    row 5: the GPU recipe candidates (S2S_GPU_RECIPES, 'NAME|VOCAB|FLAGS' lines), each a whole
#             `s2s train` under --max-time (tokenizer in the run), chosen on validation BLEU
#   test      row 5: the chosen candidate scored once on test_2016_flickr: time to each BLEU milestone
#             (from the command's start and from its first update), and beam 5 test BLEU
#   decode    row 6: beam 5 over test_2016_flickr in process after a warm-up, and a whole `s2s eval`
#   ct2       row 7: the chosen run exported to CTranslate2, beam 5 on the GPU beside the torch engine
#   speed     row 3: bench/train_speed.py, small and base against the transformers peer, one epoch each
#   long      row 5: the chosen recipe for up to 2 minutes: time to 40 BLEU (runs on what is left)
#
# --dry-run (or S2S_GPU_DRYRUN=1) runs the same stages on the CPU with tiny models, a slice of the data
# and budgets of seconds, in a copy of the working tree (so that bench/RESULTS.md is left alone):
# what tests/test_gpu_session.py and a machine without a GPU check. PYTHON names the interpreter
# (default python3; the dry run wants the project's venv).
set -uo pipefail

DRY=${S2S_GPU_DRYRUN:-0}
if [[ ${1:-} == --dry-run ]]; then
    DRY=1
    shift
fi
export S2S_GPU_DRYRUN=$DRY PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/s2s-gpu-out}
WORK=${S2S_GPU_WORK:-/tmp/s2s-gpu}
LOGS=$WORK/logs
export HF_DATASETS_CACHE=$WORK/hf-cache
ALL_STAGES=(profile compiled mfu recipe test decode ct2 speed long)

if ((DRY)); then
    BUDGET=${S2S_GPU_BUDGET:-900}
    RESERVE=10  # seconds kept for the summary and the archive
    DEVICE=cpu
    DATA=$WORK/data  # a slice of Multi30k, written by setup
    TRAIN_DATA=(--train "$DATA/train" --valid "$DATA/val")
    VOCAB=300
    PROFILE=(--preset tiny --max-tokens 256 --updates 3 --vocab-size "$VOCAB" --train "$DATA/train")
    COMPILE=()  # compiling on 2 CPU cores takes minutes: the dry run goes through the flow only
    MFU=(--preset tiny --max-tokens 1024 --updates 2 --vocab-size "$VOCAB" --train "$DATA/train")
    RECIPE_TIME=15
    DEFAULT_RECIPES="tiny-a|$VOCAB|--preset tiny --max-tokens 512 --lr 3e-3 --warmup-steps 10 --lr-schedule cosine --valid-every 3
tiny-b|$VOCAB|--preset tiny --max-tokens 1024 --lr 2e-3 --warmup-steps 10 --valid-every 3"
    SENTENCES=(--sentences 5)  # of test_2016_flickr, where a stage decodes it
    SCORING=(--max-snapshots 2)
    DECODE=(--repeats 1)
    CT2=(--threads 1)
    SPEED=(--shapes tiny --limit 200 --vocab "$VOCAB" --max-tokens 256 --no-peer)
    LONG_TIME=15
    #        name:cap:minimum, in seconds
    CAPS=(profile:120:5 compiled:120:5 mfu:120:5 recipe:150:10 test:120:5 decode:120:5 ct2:120:5 speed:120:5 long:120:10)
else
    BUDGET=${S2S_GPU_BUDGET:-450}
    export S2S_PEER=${S2S_PEER:-$PWD/.whl/hf_marian.py}  # bench/results.py's PEER
    RESERVE=15
    DEVICE=cuda
    DATA=data/multi30k
    TRAIN_DATA=(--train "$DATA/train" --valid "$DATA/val")
    VOCAB=8000
    PROFILE=(--preset small --max-tokens 4096 --updates 40)
    COMPILE=(--compile)
    MFU=(--preset base --max-tokens 65536 --updates 20 --no-profile)
    # Each candidate is a whole `s2s train` of RECIPE_TIME seconds (its tokenizer, data and validations
    # included), validating often enough that its snapshots time the test-BLEU milestones.
    RECIPE_TIME=45
    # "default" gives no recipe flag: it trains with what a bare `s2s train` takes on a GPU
    # (seq2seq/training/recipes.py: the small preset, 8,192-token batches, 2e-3, cosine, average of 3).
    DEFAULT_RECIPES="default|8000|--valid-every 150
base-16k|8000|--preset base --max-tokens 16384 --lr 1e-3 --warmup-steps 200 --lr-schedule cosine --valid-every 80 --average-last 3"
    SENTENCES=()  # all 1,000
    SCORING=(--max-snapshots 6)
    DECODE=(--repeats 3)
    CT2=(--threads 0)
    SPEED=(--shapes small base --limit 0)
    LONG_TIME=115  # at most: it gets what the budget has left
    CAPS=(profile:45:20 compiled:60:25 mfu:40:20 recipe:125:60 test:45:20 decode:35:15 ct2:40:15 speed:120:60 \
          long:140:80)
fi
RECIPES=${S2S_GPU_RECIPES:-$DEFAULT_RECIPES}
# Flags every candidate and the long run share: every snapshot kept (the milestones need them),
# never stopped early, the budget set by --max-time.
COMMON_TRAIN=(--keep-snapshots 100000 --patience 0)

# The chosen candidate's field (name, vocab, flags, run, started) from the recipe stage.
chosen() {
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/recipe/chosen.json" "$1"
}

need_chosen() {
    [[ -f $WORK/recipe/chosen.json ]] && return 0
    echo "no chosen recipe (the recipe stage did not finish): nothing to measure"
    return 3
}

stage_profile() {
    "$PY" bench/gpu_profile.py --device "$DEVICE" --out "$WORK/profile" --sentences 0 --label "eager step" \
        "${PROFILE[@]}"
}

stage_compiled() {
    local tokenizer=()
    [[ -f $WORK/profile/run/tokenizer.model ]] && tokenizer=(--tokenizer "$WORK/profile/run")
    "$PY" bench/gpu_profile.py --device "$DEVICE" --out "$WORK/compiled" --sentences 0 --no-profile \
        --label "compiled step" "${PROFILE[@]}" "${COMPILE[@]}" "${tokenizer[@]}"
}

stage_mfu() {
    local tokenizer=()
    [[ -f $WORK/profile/run/tokenizer.model ]] && tokenizer=(--tokenizer "$WORK/profile/run")
    "$PY" bench/gpu_profile.py --device "$DEVICE" --out "$WORK/mfu" --sentences 0 --label "MFU" "${MFU[@]}" \
        "${tokenizer[@]}"
}

stage_recipe() {
    local variants=() line
    while IFS= read -r line; do
        [[ -n $line ]] && variants+=(--variant "$line")
    done <<<"$RECIPES"
    "$PY" bench/recipe.py --out "$WORK/recipe" --tokenizer-in-run --scores training "${variants[@]}" \
        --shared "--device $DEVICE ${TRAIN_DATA[*]} ${COMMON_TRAIN[*]} --max-time $RECIPE_TIME"
}

stage_test() {
    need_chosen || return
    "$PY" bench/quality.py --device "$DEVICE" --out "$WORK/test" --scored-run "$(chosen run)" \
        --started "$(chosen started)" --beams 5 "${SCORING[@]}" "${SENTENCES[@]}" \
        --label "GPU recipe chosen on val ($(chosen name)), ${RECIPE_TIME} s command cap"
}

stage_decode() {
    need_chosen || return
    "$PY" bench/decode_speed.py --run "$(chosen run)" --device "$DEVICE" --beams 5 --eval-process "${DECODE[@]}" \
        "${SENTENCES[@]}"
}

stage_ct2() {
    need_chosen || return
    "$PY" bench/decode_speed.py --run "$(chosen run)" --device "$DEVICE" --engines torch,ctranslate2 --beams 5 \
        --repeats 1 "${CT2[@]}" "${SENTENCES[@]}"
}

stage_speed() {
    "$PY" bench/train_speed.py --device "$DEVICE" --epochs 1 "${SPEED[@]}"
}

stage_long() {
    need_chosen || return
    # What the budget leaves this stage, less the scoring after training (a fifth of it, at least 20 s).
    local seconds=${S2S_STAGE_SECONDS:-$LONG_TIME} flags
    local train_time=$((seconds - (seconds / 5 > 20 ? seconds / 5 : 20)))
    ((train_time > LONG_TIME)) && train_time=$LONG_TIME
    read -ra flags <<<"$(chosen flags)"
    "$PY" bench/quality.py --device "$DEVICE" --out "$WORK/long" --tokenizer-in-run --vocab-size "$(chosen vocab)" \
        --beams 5 "${SCORING[@]}" "${SENTENCES[@]}" --label "GPU recipe chosen on val ($(chosen name)), ${train_time} s command cap" \
        -- "${flags[@]}" "${TRAIN_DATA[@]}" "${COMMON_TRAIN[@]}" --max-time "$train_time"
}

if [[ ${1:-} == --stage ]]; then  # one stage, in a process of its own (run_stage's timeout ends its group)
    "stage_$2"
    exit
fi

if ((DRY)); then
    # A copy of what travels to the device machine: the working tree, tracked files and untracked ones
    # that git does not ignore. The benches append to the copy's bench/RESULTS.md.
    rm -rf "$WORK"
    mkdir -p "$WORK/repo"
    git ls-files -z -co --exclude-standard | tar -c --null -T - | tar -x -C "$WORK/repo" || exit 1
    cd "$WORK/repo" || exit 1
fi
mkdir -p "$LOGS" "$OUT"
START=$SECONDS
RESULTS_BEFORE=$(wc -c <bench/RESULTS.md)

setup() {
    if ((DRY)); then
        # The first lines of Multi30k's train and val: enough pairs for a tokenizer of VOCAB pieces.
        "$PY" - "$DATA" <<'EOF' || return 1
import gzip, sys
from pathlib import Path
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for split, count in (("train", 600), ("val", 40)):
    for lang in ("en", "de"):
        with gzip.open(f"data/multi30k/{split}.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()[:count]
        with gzip.open(out / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
EOF
    else
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || return 1
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || return 1
    fi
    # The machine line of the summary, and whether ctranslate2 can translate on this GPU.
    "$PY" - "$WORK/machine.json" <<'EOF' || return 1
import ctypes, json, os, platform, subprocess, sys
import torch
machine = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"}
try:
    machine["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip() or None
except (OSError, subprocess.TimeoutExpired):
    machine["driver"] = None
try:
    import ctranslate2
    machine["ctranslate2"] = ctranslate2.__version__
    machine["ctranslate2_cuda_devices"] = ctranslate2.get_cuda_device_count()
except ImportError as error:
    machine["ctranslate2"] = f"not importable: {error}"
try:  # what ctranslate2's CUDA 12 build loads to multiply on the GPU
    ctypes.CDLL("libcublas.so.12")
    machine["libcublas.so.12"] = "loads"
except OSError as error:
    machine["libcublas.so.12"] = f"does not load: {error}"
json.dump(machine, open(sys.argv[1], "w"), indent=1)
print(json.dumps(machine))
EOF
}

# pack: the archive of every small file under WORK (logs, JSON, metrics; no weights, data or caches).
pack() {
    (cd "$WORK" && find . -path ./repo -prune -o -path ./hf-cache -prune -o -path ./data -prune -o -type f \
        -size -2M ! -name '*.safetensors' ! -name '*.pt' ! -name '*.bin' ! -name '*.arrow' ! -name '*.gz' \
        ! -name 'tokenizer*' -print | tar -czf "$OUT/gpu_session.tar.gz" -T -)
}

# run_stage NAME: stage_NAME under `timeout`, in a process group that timeout ends whole at its cap.
run_stage() {
    local name=$1 entry cap="" minimum left seconds began status
    for entry in "${CAPS[@]}"; do
        IFS=: read -r stage_name stage_cap stage_minimum <<<"$entry"
        [[ $stage_name == "$name" ]] && cap=$stage_cap minimum=$stage_minimum
    done
    if [[ -z $cap ]]; then
        echo "unknown stage $name (${ALL_STAGES[*]})" | tee -a "$LOGS/stages.log"
        return
    fi
    left=$((BUDGET - (SECONDS - START) - RESERVE))
    if ((left < minimum)); then
        echo "$name: skipped, ${left}s left of the budget (needs ${minimum}s)" | tee -a "$LOGS/stages.log"
        return
    fi
    seconds=$((left < cap ? left : cap))
    began=$SECONDS
    S2S_STAGE_SECONDS=$seconds timeout --kill-after 5 "$seconds" bash "$0" --stage "$name" >"$LOGS/$name.log" 2>&1
    status=$?
    local how="exit $status"
    ((status == 124 || status == 137)) && how="cut at its cap"
    echo "$name: $how after $((SECONDS - began))s (cap ${seconds}s)" | tee -a "$LOGS/stages.log"
    pack
}

echo "setup: starting (budget ${BUDGET}s)"
setup >"$LOGS/setup.log" 2>&1
status=$?
cat "$LOGS/setup.log"
echo "setup: exit $status after $((SECONDS - START))s" | tee -a "$LOGS/stages.log"
if ((status != 0)); then
    pack
    cp "$LOGS/setup.log" "$OUT/"
    exit 1
fi
((DRY)) || export PYTHONPATH=/tmp/site

stages=("$@")
((${#stages[@]})) || stages=("${ALL_STAGES[@]}")
for name in "${stages[@]}"; do
    run_stage "$name"
done

"$PY" bench/gpu_summary.py --work "$WORK" --budget "$BUDGET" --recipe-time "$RECIPE_TIME" \
    >"$LOGS/summary.log" 2>&1 || cat "$LOGS/summary.log"
tail -c +$((RESULTS_BEFORE + 1)) bench/RESULTS.md >"$WORK/RESULTS-appended.md"
echo "total: ${SECONDS}s" >>"$LOGS/stages.log"
pack
cp "$WORK/RESULTS-appended.md" "$OUT/"
[[ -f $WORK/summary.md ]] && cp "$WORK/summary.md" "$OUT/"
echo
cat "$LOGS/stages.log"
echo
[[ -f $WORK/summary.md ]] && cat "$WORK/summary.md"
