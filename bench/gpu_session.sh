#!/usr/bin/env bash
# The GPU checks and measurements (issues 3, 4, 6 and 16), in stages run in
# one call of the device tool, inside one time budget: each stage gets at
# most its own cap and what is left of S2S_GPU_BUDGET (seconds, default 500),
# and a stage with under 30 s left is skipped. A stage that fails or runs out
# of time does not stop the next one.
#
# Before the first call, on this machine:
#   echo /.whl/ >> .git/info/exclude; echo /.peer/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
#       ctranslate2==4.8.5 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 uvicorn==0.55.0
#   mkdir -p .peer && cp ../shared/peers/hf_marian.py .peer/
# Then one call carries .whl and .peer and runs, for example:
#   bash bench/gpu_session.sh profile tests speed
# with $OUT set by the tool: RESULTS.md and the logs come back under it.
#
# Stages:
#   profile  bench/gpu_profile.py, with lazy and with eager CUDA module loading, and with whole-batch
#            loss and decoding blocks: where a first and a second pass over the same updates and
#            sentences spend their time (run this first)
#   speed    training throughput and MFU (small, base) beside the peer, one epoch of all 29k pairs
#   tests    the whole test suite with CUDA present (16 workers), so "auto" means the GPU
#   quality  the default recipe en->de under a time cap, with time to each test-BLEU milestone
#   batched  the quality run's model: batched beam search against one sentence at a time, under bf16
#   decode   decoding speed beside the peer (peer-small, 3 epochs of each)
#   pairs    the default recipe de->en and en->fr
#   scaling  softmax against Performer attention, 256 to 64k tokens
set -uo pipefail
export PYTHONUNBUFFERED=1 S2S_PEER="$PWD/.peer/hf_marian.py"
OUT="${OUT:-/tmp/s2s-out}"
BUDGET="${S2S_GPU_BUDGET:-500}"
START=$SECONDS
mkdir -p "$OUT"

setup() {
    # The GPU image has torch, sentencepiece, sacrebleu, typer, rich, transformers, tensorboard and
    # matplotlib; not datasets, ctranslate2, fastapi or uvicorn.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
    python3 -c "import datasets, pyarrow, torch, seq2seq; print('datasets', datasets.__version__, 'pyarrow',
pyarrow.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nproc
}

finish() {
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    echo "total ${SECONDS}s" >>"$OUT/stages.log"
}
trap finish EXIT

# limit CAP: the seconds a stage may take, or nothing when too little is left.
limit() {
    local left=$((BUDGET - (SECONDS - START) - 10))
    ((left < 30)) && return 1
    echo $((left < $1 ? left : $1))
}

stage() {  # stage NAME CAP: run stage_NAME under `timeout`, and log how it ended
    local name=$1 seconds
    if ! seconds=$(limit "$2"); then
        echo "$name: skipped, too little time left" | tee -a "$OUT/stages.log"
        return
    fi
    local began=$SECONDS
    timeout --kill-after 5 "$seconds" bash -c "$(declare -f "stage_$name"); stage_$name" >"$OUT/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - began))s (cap ${seconds}s)" | tee -a "$OUT/stages.log"
    # A stage cut short must not leave processes (pytest workers, training) that slow the next
    # one down and make its figures wrong: say how many were left, and end them. (So the command
    # that starts this script must not itself contain these words.)
    local pattern='pytest|bin/s2s |hf_marian|bench/[a-z_]+\.py'
    local left
    left=$(pgrep -fc "$pattern" || true)
    if ((left > 0)); then
        echo "$name: $left processes left running; killed" | tee -a "$OUT/stages.log"
        pkill -9 -f "$pattern" || true
        sleep 2
    fi
}

stage_profile() {
    python3 bench/gpu_profile.py --device cuda --sentences 200 --out /tmp/profile-lazy
    CUDA_MODULE_LOADING=EAGER python3 bench/gpu_profile.py --device cuda --sentences 200 --out /tmp/profile-eager
    # The loss and decoding blocks were sized for a CPU's cache: the whole batch at once instead.
    python3 bench/gpu_profile.py --device cuda --sentences 200 --out /tmp/profile-big --loss-block-elements 33554432 \
        --decode-block-rows 100000
    for kind in lazy eager big; do
        cp "/tmp/profile-$kind/summary.json" "$OUT/profile_${kind}_summary.json"
        cat /tmp/profile-$kind/*_profile.txt >"$OUT/profile_${kind}_tables.txt"
    done
}

stage_speed() {
    python3 bench/train_speed.py --shapes small base --limit 0 --max-tokens 16384 --epochs 3 --device cuda
}

stage_tests() {
    # One thread per worker: 16 workers on 16 cores.
    OMP_NUM_THREADS=1 python3 -m pytest -q -n 16 -p no:cacheprovider -rfE tests
}

stage_quality() {
    python3 bench/quality.py --device cuda --out /tmp/quality-en-de --label "default GPU recipe, 100 s training cap" \
        -- --max-time 100
}

stage_batched() {
    local run=/tmp/quality-en-de/run src=data/multi30k/test_2016_flickr.en.gz
    s2s translate -m "$run" -i "$src" -o /tmp/batched.de --beam 5 --device cuda
    s2s translate -m "$run" -i "$src" -o /tmp/single.de --beam 5 --device cuda --buffer-lines 1
    wc -l /tmp/batched.de /tmp/single.de
    echo "lines that differ, batched against one at a time: $(diff /tmp/batched.de /tmp/single.de | grep -c '^<')"
    python3 bench/decode_speed.py --run "$run" --device cuda --repeats 2
}

stage_decode() {
    python3 "$S2S_PEER" --data data/multi30k --out /tmp/peer-work --layers 4 --dim 256 --heads 4 \
        --ffn 1024 --epochs 3 --batch 128 --repeats 1 --save /tmp/peer-small
    s2s train --run /tmp/s2s-peer-small --preset peer-small --epochs 3 --device cuda
    python3 bench/decode_speed.py --run /tmp/s2s-peer-small --peer-model /tmp/peer-small --device cuda --repeats 3
}

stage_pairs() {
    for pair in de-en en-fr; do
        python3 bench/quality.py --device cuda --src "${pair%-*}" --tgt "${pair#*-}" \
            --out "/tmp/quality-$pair" --label "default GPU recipe"
    done
}

stage_scaling() {
    python3 bench/attention_scaling.py --device cuda --lengths 256 1024 4096 16384 65536 --max-seconds 10
}

# Not piped: setup's PYTHONPATH must reach the stages.
setup >"$OUT/setup.log" 2>&1
status=$?
cat "$OUT/setup.log"
((status == 0)) || exit 1
caps=(profile:240 tests:160 speed:170 quality:200 batched:60 decode:200 pairs:400 scaling:60)
for name in "$@"; do
    cap=""
    for entry in "${caps[@]}"; do [[ ${entry%%:*} == "$name" ]] && cap=${entry#*:}; done
    if [[ -z $cap ]]; then
        echo "unknown stage $name (profile, speed, tests, quality, batched, decode, pairs or scaling)" >&2
        exit 2
    fi
    stage "$name" "$cap"
done
