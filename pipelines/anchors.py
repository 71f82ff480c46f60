"""DVC stage anchors: JPEG, WebP and AVIF through Pillow on the evaluation images (params: evaluate.anchors)."""

from lic.eval.anchors import run_anchors
from lic.params import load_params
from pipelines.stage import run

if __name__ == "__main__":
    run(lambda: run_anchors(load_params()))
