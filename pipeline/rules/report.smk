# The report: figures and tables from cached artifacts (no training or inference reruns here).
# Each output is marked for Snakemake's HTML report:  snakemake --report report.html eval_coco

REPORT = f"{ROOT}/report"
TRAINED_VARIANTS = config["mtgan"]["variants"]
REPORT_VARIANT = report_variant(config)
REPORT_METHOD = report_method(config)
ERROR_METHODS = error_methods(config)
EVAL_BENCHMARKS = eval_benchmarks(config, BENCHMARKS)


rule report_charts:
    input:
        scores=expand(f"{ROOT}/score/{{method}}.json", method=METHODS),
        evals=expand(f"{ROOT}/score/{{method}}_eval.npz", method=METHODS),
        accuracy=inference_files(f"{ROOT}/infer", config, "_accuracy.json"),
        training=expand(f"{ROOT}/mtgan/{{variant}}/metrics.jsonl", variant=TRAINED_VARIANTS),
    output:
        **{
            f"pr_{area}": report(
                f"{REPORT}/pr_{area}.png", caption="captions/pr.rst", category="1. Metrics", subcategory="Precision-recall",
                labels={"size range": area},
            )
            for area in SIZE_RANGES
        },
        bars=report(f"{REPORT}/metrics_bars.png", caption="captions/metrics_bars.rst", category="1. Metrics"),
        per_class=report(
            f"{REPORT}/per_class_ap_change.png", caption="captions/per_class.rst", category="1. Metrics", subcategory="Per class"
        ),
        per_class_csv=report(
            f"{REPORT}/per_class_ap_change.csv", caption="captions/per_class.rst", category="1. Metrics", subcategory="Per class"
        ),
        training=report(f"{REPORT}/training_curves.png", caption="captions/training.rst", category="3. Training"),
        accuracy=report(f"{REPORT}/accuracy.png", caption="captions/accuracy.rst", category="3. Training"),
        accuracy_by_side=report(f"{REPORT}/accuracy_by_side.png", caption="captions/accuracy_by_side.rst", category="3. Training"),
    params:
        scores=lambda wildcards, input: " ".join(f"--score {s} --eval {e}" for s, e in zip(input.scores, input.evals)),
        accuracy=lambda wildcards, input: " ".join(f"--accuracy {a}" for a in input.accuracy),
        training=lambda wildcards, input: " ".join(f"--training {v}={p}" for v, p in zip(TRAINED_VARIANTS, input.training)),
        outputs=lambda wildcards, output: out_args(output),
    log:
        f"{LOGS}/report_charts.log",
    benchmark:
        f"{BENCHMARKS}/report_charts.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "report_charts"),
    conda:
        CONDA_ENV
    shell:
        "mtgan report-charts {params.scores} {params.accuracy} {params.training} {params.outputs} > {log} 2>&1"


rule report_errors:
    input:
        index=rules.data.output.index,
        results=[score_results_input(ROOT, TEST_SPLIT, m) for m in ERROR_METHODS],
    output:
        **{
            f"{method}_{area}": report(
                f"{REPORT}/errors/{method}_{area}.png", caption="captions/errors.rst", category="2. Error analysis",
                labels={"method": method, "objects": area},
            )
            for method in ERROR_METHODS
            for area in ERROR_AREAS
        },
        table=report(f"{REPORT}/errors/errors.csv", caption="captions/errors_table.rst", category="2. Error analysis"),
        markdown=f"{REPORT}/errors/errors.md",
    params:
        split=TEST_SPLIT,
        results=lambda wildcards, input: " ".join(f"--results {m}={p}" for m, p in zip(ERROR_METHODS, input.results)),
        outputs=lambda wildcards, output: out_args(output),
    log:
        f"{LOGS}/report_errors.log",
    benchmark:
        f"{BENCHMARKS}/report_errors.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "report_errors"),
    conda:
        CONDA_ENV
    shell:
        "mtgan report-errors --data-index {input.index} --split {params.split} {params.results} "
        "{params.outputs} > {log} 2>&1"


rule report_rois:
    input:
        index=rules.data.output.index,
        model=f"{ROOT}/mtgan/{REPORT_VARIANT}/model.pt",
        manifest=f"{ROOT}/shards/test/manifest.json",
    output:
        grid=report(f"{REPORT}/roi_grid.png", caption="captions/roi_grid.rst", category="4. Pictures"),
    params:
        split=TEST_SPLIT,
        rule=report_rois_args(config),
    log:
        f"{LOGS}/report_rois.log",
    benchmark:
        f"{BENCHMARKS}/report_rois.tsv"
    threads: TORCH_THREADS
    resources:
        **job_resources(config, ROLE_SPLIT, "report_rois"),
    conda:
        CONDA_ENV
    shell:
        "mtgan report-rois --data-index {input.index} --split {params.split} --model {input.model} "
        "--manifest {input.manifest} {params.rule} --out {output.grid} > {log} 2>&1"


rule report_detections:
    input:
        index=rules.data.output.index,
        baseline=score_results_input(ROOT, TEST_SPLIT, "baseline"),
        results=score_results_input(ROOT, TEST_SPLIT, REPORT_METHOD),
    output:
        better=report(f"{REPORT}/detections/better.png", caption="captions/detections.rst", category="4. Pictures"),
        worse=report(f"{REPORT}/detections/worse.png", caption="captions/detections.rst", category="4. Pictures"),
        images=report(f"{REPORT}/detections/images.csv", caption="captions/detections.rst", category="4. Pictures"),
    params:
        split=TEST_SPLIT,
        outputs=lambda wildcards, output: out_args(output),
        method=REPORT_METHOD,
    log:
        f"{LOGS}/report_detections.log",
    benchmark:
        f"{BENCHMARKS}/report_detections.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "report_detections"),
    conda:
        CONDA_ENV
    shell:
        "mtgan report-detections --data-index {input.index} --split {params.split} --baseline {input.baseline} "
        "--results {input.results} --method {params.method} {params.outputs} > {log} 2>&1"


rule profile:
    """The run's profile: every job's benchmark (wall time, CPU time, peak memory) in one table."""
    input:
        list(EVAL_BENCHMARKS.values()),
    output:
        markdown=f"{REPORT}/profile.md",
        table=report(f"{REPORT}/profile.csv", caption="captions/profile.rst", category="5. Run profile"),
        chart=report(f"{REPORT}/profile.png", caption="captions/profile.rst", category="5. Run profile"),
    params:
        benchmarks=" ".join(f"--benchmark {job}={path}" for job, path in EVAL_BENCHMARKS.items()),
        outputs=lambda wildcards, output: out_args(output),
    log:
        f"{LOGS}/profile.log",
    resources:
        **job_resources(config, ROLE_SPLIT, "profile"),
    conda:
        CONDA_ENV
    shell:
        "mtgan report-profile {params.benchmarks} {params.outputs} > {log} 2>&1"


rule report_all:
    """Every part of the report (the HTML page: snakemake --report report.html eval_coco)."""
    input:
        rules.report_charts.output,
        rules.report_errors.output,
        rules.report_rois.output,
        rules.report_detections.output,
