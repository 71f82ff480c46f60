"""DVC stage anchors: JPEG, WebP and AVIF through Pillow on the evaluation images."""

from lic.eval.anchors import run_anchors
from pipelines.stage import run

if __name__ == "__main__":
    run(run_anchors)
