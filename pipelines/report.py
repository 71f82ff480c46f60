"""DVC stage report: RD curves, BD-rate and BD-PSNR over every lambda and anchor (params: report)."""

from lic.eval.report import build_report
from lic.params import load_params
from pipelines.stage import run

if __name__ == "__main__":
    run(lambda: build_report(load_params()))
