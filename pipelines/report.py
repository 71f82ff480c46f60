"""DVC stage report: RD curves, BD-rate and BD-PSNR over every lambda and anchor."""

from lic.eval.report import build_report
from pipelines.stage import run

if __name__ == "__main__":
    run(build_report)
