# MTGAN for small object detection: the pipeline.
#
#   snakemake --cores 8 eval_coco                                  # built-in dataset, CPU presets
#   snakemake --cores 8 --configfile config/coco.yaml eval_coco    # COCO 2017 on disk
#   snakemake --cores 8 --configfile config/widerface.yaml eval_widerface   # WIDER FACE, Easy/Medium/Hard
#   snakemake --report report.html eval_coco                       # the HTML report of a finished run
#   snakemake --cores 8 submit_coco --configfile config/coco.yaml config/coco-testdev.yaml   # test-dev upload
#
# The config (config/default.yaml, merged with any --configfile / --config) is validated against
# schemas/config.schema.yaml before anything runs. Stages live in pipeline/rules/*.smk; each rule
# calls one `mtgan` command and caches its outputs under artifacts/<dataset>/.

from pathlib import Path


configfile: str(Path(workflow.basedir) / "config" / "default.yaml")


report: "pipeline/rules/captions/workflow.rst"


include: "pipeline/rules/common.smk"
include: "pipeline/rules/data.smk"
include: "pipeline/rules/baseline.smk"
include: "pipeline/rules/shards.smk"
include: "pipeline/rules/mtgan.smk"
include: "pipeline/rules/evaluate.smk"
include: "pipeline/rules/report.smk"
include: "pipeline/rules/widerface.smk"
include: "pipeline/rules/submit.smk"


# Snakemake deletes a job's declared outputs before the job runs (with --forcerun too), before any
# stage can check what they hold: so before any job runs, the run stops, naming them, when a
# folder the pipeline wrote holds files it did not write, or the artifacts hold a symbolic link.
onstart:
    refuse_foreign_entries(ROOT)


rule eval_coco:
    """The final table on the configured dataset (artifacts/<dataset>/eval/metrics.md) and the
    report's figures (artifacts/<dataset>/report/), with every file of the run a user reads
    (a missing one is rebuilt)."""
    input:
        run_deliverables(config, ROOT, TEST_SPLIT),
        rules.table.output,
        rules.report_all.input,
        rules.profile.output,
    default_target: True


rule submit_coco:
    """Images without ground truth (data.submit_split, e.g. COCO test-dev): every method's results
    file, checked and named for upload: artifacts/<dataset>/submit/detections_<split>_<method>_results.json."""
    input:
        lambda wildcards: submission_files(config, ROOT),


rule eval_widerface:
    """eval_coco plus the official WIDER FACE evaluation: artifacts/<dataset>/eval/widerface.md."""
    input:
        lambda wildcards: widerface_ground_truth_files(config),
        rules.eval_coco.input,
        rules.table_widerface.output,
