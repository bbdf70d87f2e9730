#!/usr/bin/env bash
# The whole pipeline at toy size, on the HDRIs inside the bpy wheel, in under a minute on a 2-core CPU (53 s measured):
# render -> augment -> caption -> manifests -> train (DiffHDR, tiny random model) -> infer -> evaluate.
# Every step is the real CLI a researcher runs at full size; only the sizes (and the random-weight model) differ.
#   bash examples/tiny_pipeline.sh [WORKDIR]        (default: ./tiny-pipeline)
set -euo pipefail
W=${1:-tiny-pipeline}
mkdir -p "$W"
export HF_HUB_OFFLINE=1

# 1. 8 HDRIs x 2 camera programs x 9 frames of 32x32, direct engine (validated against Cycles), no Ray
python -m render.run --root "$W/data" --engine direct --resolution 32x32 --frames 9 --samples 4 \
    --programs highlight_zoom_in,rotation_000 --no-ray
# 2. one LDR augmentation per clip (DiffHDR §3.1.2 as written), 3. captions from image statistics (no VLM weights)
python -m augment.run --root "$W/data" --no-ray
python -m caption.run --root "$W/data" --backend stats --no-ray
# 4. an immutable manifest version; 2 clips (one HDRI) held out for test
python -m manifests build --root "$W/data" --test 2 --quiet
M="$W/data/manifests/v0001.parquet"
# 5. DiffHDR: tiny random Wan2.1-VACE + LoRA, 6 steps on the train split
python -m train.run --manifest "$M" --model diffhdr --config train/configs/diffhdr_tiny.yaml --run "$W/run" \
    --quiet
# 6. HDR predictions for every test clip, from its stored LDR frames (written as <hdri_id>/<clip_id>/, the dataset's layout)
python -m train.infer --run "$W/run" --manifest "$M" --split test --aug paper_00 --out "$W/pred" --steps 4 --quiet
# 7. metrics of the test split (the fast ones; add fvvdp,cvvdp for the VDPs)
python -m evaluate.run --manifest "$M" --split test --predictions "$W/pred" --out "$W/eval" \
    --metrics psnr_t,ssim_t,psnr_l,psnr_pu21,temporal_t
