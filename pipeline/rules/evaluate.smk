# Stages 6-8: inference of each variant under each test-time rule on the test shards, merging into
# detections (alone and as an ensemble with the baseline), pycocotools scores, and the final table.

METHODS = methods(config)


rule infer:
    input:
        model=rules.train_mtgan.output.model,
        manifest=f"{ROOT}/shards/test/manifest.json",
    output:
        table=f"{ROOT}/infer/{{rule}}/{{variant}}.parquet",
        accuracy=f"{ROOT}/infer/{{rule}}/{{variant}}_accuracy.json",
    params:
        sections=lambda wildcards: infer_sections(config, wildcards.rule),
    log:
        f"{LOGS}/infer_{{rule}}_{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/infer_{{rule}}_{{variant}}.tsv"
    threads: TORCH_THREADS
    resources:
        **job_resources(config, ROLE_SPLIT, "infer"),
    conda:
        CONDA_ENV
    shell:
        "mtgan infer --sections {params.sections} --model {input.model} --manifest {input.manifest} --rule {wildcards.rule} "
        "--out {output.table} --out-accuracy {output.accuracy} --threads {threads} > {log} 2>&1"


rule merge:
    # One job per variant and rule: the method alone and, with merge.ensemble, its ensemble.
    input:
        rois=f"{ROOT}/rois/test.parquet",
        inference=lambda wildcards: inference_input(f"{ROOT}/infer", wildcards.alone),
    output:
        **merge_outputs(f"{ROOT}/merge/{{alone}}", ".json", config),
    wildcard_constraints:
        alone=merged_method_pattern(config),
    params:
        sections=sections_json(config, "merge"),
        ensemble=lambda wildcards, output: out_ensemble_arg(output),
    log:
        f"{LOGS}/merge_{{alone}}.log",
    benchmark:
        f"{BENCHMARKS}/merge_{{alone}}.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "merge"),
    conda:
        CONDA_ENV
    shell:
        "mtgan merge --sections {params.sections} --rois {input.rois} --inference {input.inference} "
        "--out {output.results} {params.ensemble} > {log} 2>&1"


rule score:
    input:
        index=rules.data.output.index,
        results=lambda wildcards: score_results_input(ROOT, TEST_SPLIT, wildcards.method),
    output:
        json=f"{ROOT}/score/{{method}}.json",
        table=f"{ROOT}/score/{{method}}.md",
        arrays=f"{ROOT}/score/{{method}}_eval.npz",
    params:
        split=TEST_SPLIT,
    log:
        f"{LOGS}/score_{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/score_{{method}}.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "score"),
    conda:
        CONDA_ENV
    shell:
        "mtgan score --data-index {input.index} --split {params.split} --results {input.results} --method {wildcards.method} "
        "--out-json {output.json} --out-md {output.table} --out-eval {output.arrays} > {log} 2>&1"


rule table:
    input:
        scores=expand(f"{ROOT}/score/{{method}}.json", method=METHODS),
        accuracy=inference_files(f"{ROOT}/infer", config, "_accuracy.json"),
    output:
        csv=report(f"{ROOT}/eval/metrics.csv", caption="captions/metrics_table.rst", category="1. Metrics"),
        markdown=f"{ROOT}/eval/metrics.md",
        per_class=f"{ROOT}/eval/per_class_ap.csv",
        accuracy=report(f"{ROOT}/eval/accuracy.csv", caption="captions/accuracy.rst", category="3. Training"),
    params:
        outputs=lambda wildcards, output: out_args(output),
        accuracy=lambda wildcards, input: " ".join(f"--accuracy {a}" for a in input.accuracy),
    log:
        f"{LOGS}/table.log",
    benchmark:
        f"{BENCHMARKS}/table.tsv"
    resources:
        **job_resources(config, ROLE_SPLIT, "table"),
    conda:
        CONDA_ENV
    shell:
        "mtgan table {params.outputs} {params.accuracy} {input.scores} > {log} 2>&1"
