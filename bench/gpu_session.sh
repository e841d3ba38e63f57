#!/usr/bin/env bash
# The GPU measurements of issues 3, 4 and 6, in stages that each fit one
# 10-minute call of the device tool. Nothing here has run on a GPU yet.
#
# Before the first call, on this machine:
#   echo /.whl/ >> .git/info/exclude; echo /.peer/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   mkdir -p .peer && cp ../shared/peers/hf_marian.py .peer/
# Then each call carries .whl and .peer and runs, for example:
#   bash bench/gpu_session.sh speed
# with $OUT set by the tool: RESULTS.md and the logs come back under it.
#
# Stages:
#   speed    training throughput and MFU (small, base) and decoding speed, both beside the peer
#   quality  the default recipe en->de, with time to each BLEU milestone
#   pairs    the same recipe de->en and en->fr
#   scaling  softmax against Performer attention, 256 to 64k tokens
set -euo pipefail
export PYTHONUNBUFFERED=1 S2S_PEER="$PWD/.peer/hf_marian.py"
OUT="${OUT:-/tmp/s2s-out}"
mkdir -p "$OUT"

setup() {
    # The GPU image has torch, sentencepiece, sacrebleu, typer, rich and transformers, not datasets.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
    python3 -c "import datasets, pyarrow, seq2seq; print('datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
}

finish() {
    cp bench/RESULTS.md "$OUT/RESULTS.md"
}
trap finish EXIT

setup
for stage in "$@"; do
    case "$stage" in
    speed)
        python3 bench/train_speed.py --shapes small base --limit 0 --max-tokens 16384 --device cuda \
            2>&1 | tee "$OUT/train_speed.log"
        # A peer-small model for decoding, 3 epochs of the peer's own recipe, and s2s's same shape.
        python3 "$S2S_PEER" --data data/multi30k --out /tmp/peer-work --layers 4 --dim 256 --heads 4 \
            --ffn 1024 --epochs 3 --batch 128 --repeats 1 --save /tmp/peer-small >"$OUT/peer_train.log" 2>&1
        s2s train --run /tmp/s2s-peer-small --preset peer-small --epochs 3 --device cuda >"$OUT/s2s_train.log" 2>&1
        python3 bench/decode_speed.py --run /tmp/s2s-peer-small --peer-model /tmp/peer-small --device cuda \
            --repeats 3 2>&1 | tee "$OUT/decode_speed.log"
        ;;
    quality)
        python3 bench/quality.py --device cuda --out /tmp/quality-en-de --label "default GPU recipe" \
            2>&1 | tail -40 | tee "$OUT/quality_en_de.log"
        ;;
    pairs)
        for pair in de-en en-fr; do
            python3 bench/quality.py --device cuda --src "${pair%-*}" --tgt "${pair#*-}" \
                --out "/tmp/quality-$pair" --label "default GPU recipe" 2>&1 | tail -30 | tee "$OUT/quality_$pair.log"
        done
        ;;
    scaling)
        python3 bench/attention_scaling.py --device cuda --lengths 256 1024 4096 16384 65536 \
            2>&1 | tee "$OUT/attention_scaling.log"
        ;;
    *)
        echo "unknown stage $stage (speed, quality, pairs or scaling)" >&2
        exit 2
        ;;
    esac
done
